"""Does a description set carry meaning? The controls of METHODS.md §2–3 in one audit.

The audit runs on a ``RunContext``: it reports on the ``eval`` role's split, chooses the class-name weight
``w`` on the ``choose`` role's (validation) and measures discriminativeness on the ``fit`` role's (training):

* classname-free scoring, ``s_c(x) = w·v·e("a photo of a {c}.") + mean_{d∈D_c} v·e(d)``, descriptions encoded
  without the class name; the test-set-oracle ``w`` only when asked, and labelled as an oracle;
* the same with the descriptions randomly reassigned (several seeds, mean ± std with ddof = 0): by default
  as the authors do, each class draws as many descriptions as it has uniformly from the pool WITH
  replacement (duplicates collapse); ``reassignment="permute"`` shuffles the descriptions across classes
  instead — if real beats reassigned, the descriptions say something about their classes;
* descriptions alone (``w = 0``), real and reassigned;
* CbD with the class name against WaffleCLIP random descriptors at the same count;
* per-description discriminativeness on the selection split: ``S[d, c] − mean_{j≠c} S[d, j]``,
  where ``S[d, c]`` is the mean cosine of description ``d`` with class ``c``'s images; low or negative
  values flag generic and wrong descriptions. With a truth file (``{class: [{"descriptor", "kind"}]}``,
  kinds true/generic/wrong) the audit reports how well this ranking puts the true ones first.

Its parameters are declared like a method's (``DescriptionAudit.parameters``) and parsed by the same
``--param NAME=VALUE`` parser.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import read_json
from .context import RunContext
from .methods import Method, Param, jsonable_params, make_method
from .methods.dds import selection_means
from .methods.descriptions import SOURCE_DOC
from .methods.pool import DescriptionPool, DescriptorSource, resolve_descriptors
from .paths import locate
from .pipeline import ZeroShotClassifier, aggregate_metrics
from .prompts import format_template, normalise_descriptor
from .records import Record
from .scoring import choose_on_validation, evaluate, mean_std

log = logging.getLogger(__name__)

WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _class_means(emb: np.ndarray, per_class: Sequence[Sequence[int]], dim: int) -> np.ndarray:
    """Mean description embedding of each class (zeros for a class without descriptions)."""
    out = np.zeros((len(per_class), dim), dtype=np.float32)
    for c, ids in enumerate(per_class):
        if ids:
            out[c] = emb[list(ids)].mean(axis=0)
    return out


def _top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(100 * (scores.argmax(axis=1) == labels).mean())


def reassign(per_class: Sequence[Sequence[int]], pool_size: int, rng: np.random.Generator,
             mode: str = "draw") -> list[list[int]]:
    """Randomly reassigned descriptions, each class keeping its number of descriptions.

    ``draw`` (the authors'): each class draws its count uniformly from the whole pool with replacement, and
    duplicates collapse; ``permute``: the descriptions of all classes shuffled across classes.
    """
    if mode == "draw":
        return [sorted(set(rng.integers(pool_size, size=len(ids)).tolist())) if ids else [] for ids in per_class]
    if mode != "permute":
        raise ValueError(f"reassignment mode {mode!r}")
    flat = np.array([d for ids in per_class for d in ids], dtype=np.int64)
    shuffled = rng.permutation(flat)
    out, start = [], 0
    for ids in per_class:
        out.append(shuffled[start : start + len(ids)].tolist())
        start += len(ids)
    return out


def load_truth(path: Path) -> dict[tuple[str, str], str]:
    """``{(class, normalised descriptor): kind}`` from a truth file."""
    data = read_json(path, what="descriptor truth file")
    return {(cls, normalise_descriptor(item["descriptor"])): item["kind"] for cls, items in data.items()
            for item in items}


def ranking_quality(disc: np.ndarray, is_true: np.ndarray) -> dict[str, float]:
    """How well ``disc`` ranks the true descriptions first: precision at the number of true ones, and AUC."""
    order = np.argsort(-disc, kind="stable")
    n_true = int(is_true.sum())
    precision = float(is_true[order[:n_true]].mean()) if n_true else float("nan")
    pos, neg = disc[is_true], disc[~is_true]
    auc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()) \
        if len(pos) and len(neg) else float("nan")
    return {"precision_at_num_true": precision, "auc_true_vs_rest": auc, "num_true": n_true,
            "num_other": int((~is_true).sum())}


class DescriptionAudit(Method):
    """The description audit: real vs reassigned descriptions, descriptions alone, CbD vs WaffleCLIP,
    per-description discriminativeness."""

    name = "audit-descriptions"
    kind = "report"
    parameters = {
        "descriptors": Param("source", SOURCE_DOC, nullable=True),
        "template": Param(str, "the class-name prompt of the classname-free scoring"),
        "seeds": Param(int, "seeds of the reassignment control and of WaffleCLIP", low=1),
        "reassignment": Param(str, "draw: each class draws its count from the pool with replacement (the "
                              "authors'); permute: shuffle the descriptions across classes",
                              choices=("draw", "permute")),
        "weight_grid": Param("floats", "candidate class-name weights w, chosen on the choose role (ties: smaller)"),
        "oracle": Param(bool, "also report w chosen on the evaluation split itself, labelled ORACLE"),
        "truth": Param(str, "truth file {class: [{descriptor, kind}]} (default: X_truth.json beside X.json)",
                       nullable=True),
    }

    def __init__(self, descriptors: DescriptorSource = None, template: str = "a photo of a {}.", seeds: int = 5,
                 reassignment: str = "draw", weight_grid: Sequence[float] = WEIGHT_GRID, oracle: bool = False,
                 truth: str | None = None) -> None:
        self.descriptors = descriptors
        self.template = template
        self.seeds = seeds
        self.reassignment = reassignment
        self.weight_grid = weight_grid
        self.oracle = oracle
        self.truth = truth

    def run(self, ctx: RunContext) -> Record:
        """Run the audit (see the module docstring) on ``ctx`` and return its record."""
        self.check_params()
        dataset, encoder, cache = ctx.dataset, ctx.encoder, ctx.text_cache
        raw, source = resolve_descriptors(dataset, self.descriptors)
        pool_obj = DescriptionPool.from_lists(raw)
        pool, per_class = list(pool_obj.texts), [list(ids) for ids in pool_obj.own]
        pool_emb = cache.encode(pool)
        name_emb = cache.encode([format_template(self.template, c) for c in dataset.classnames])
        fit, val = ctx.features("fit"), ctx.features("choose")
        with ctx.evaluating():
            held = ctx.features("eval")
        labels, v_test, v_val = held.labels, held.embeddings, val.embeddings
        name_test, name_val = v_test @ name_emb.T, v_val @ name_emb.T
        dim = pool_emb.shape[1]

        def classname_free(assign: Sequence[Sequence[int]]) -> dict[str, Any]:
            means = _class_means(pool_emb, assign, dim)
            desc_val, desc_test = v_val @ means.T, v_test @ means.T
            w, grid = choose_on_validation(self.weight_grid,
                                           lambda w: _top1(w * name_val + desc_val, val.labels))
            row: dict[str, Any] = {"weight": w, "weight_grid_val_top1": grid,
                                   "top1": _top1(w * name_test + desc_test, labels),
                                   "descriptions_only_top1": _top1(desc_test, labels)}
            if self.oracle:
                w_o, grid_o = choose_on_validation(self.weight_grid,
                                                   lambda w: _top1(w * name_test + desc_test, labels))
                row["oracle"] = {"label": f"ORACLE: w chosen on the {held.split} split", "weight": w_o,
                                 "top1": grid_o[f"{w_o:g}"]}
            return row

        real = classname_free(per_class)
        shuffled = [classname_free(reassign(per_class, len(pool), np.random.default_rng(s), self.reassignment))
                    for s in range(self.seeds)]
        cbd = ZeroShotClassifier(make_method("descriptions", descriptors=dict(zip(dataset.classnames,
                                                                                 pool_obj.per_class_texts)))
                                 .build(ctx), encoder, cache)
        counts = [len(ids) for ids in per_class]
        waffle_count = max(1, round(float(np.mean(counts)) / 2))
        waffle_runs = [evaluate(ZeroShotClassifier(make_method("waffle", count=waffle_count, before="", after="",
                                                               seed=s).build(ctx), encoder, cache).scores(v_test),
                                labels, dataset.classnames) for s in range(self.seeds)]
        waffle_metrics = aggregate_metrics(waffle_runs)

        S = pool_emb @ selection_means(fit.embeddings, fit.labels, len(dataset.classnames), 1000)[0].T  # |P| × C
        rows = []
        for c, ids in enumerate(per_class):
            for d in ids:
                others = np.delete(S[d], c)
                rows.append({"class": dataset.classnames[c], "descriptor": pool[d],
                             "discriminativeness": float(S[d, c] - others.mean()),
                             "rank_of_own_class": int((S[d] > S[d, c]).sum()) + 1})
        rows.sort(key=lambda r: -r["discriminativeness"])
        truth_path = Path(self.truth) if self.truth else _default_truth(source)
        quality = None
        if truth_path is not None:
            kinds = load_truth(truth_path)
            for r in rows:
                r["kind"] = kinds.get((r["class"], r["descriptor"]), "unknown")
            disc = np.array([r["discriminativeness"] for r in rows])
            is_true = np.array([r["kind"] == "true" for r in rows])
            quality = {"truth_file": str(truth_path), **ranking_quality(disc, is_true),
                       "mean_by_kind": {k: float(np.mean([r["discriminativeness"] for r in rows if r["kind"] == k]))
                                        for k in sorted({r["kind"] for r in rows})}}

        def spread(key: str) -> list[float]:
            return list(mean_std([r[key] for r in shuffled]))

        results = {
            "descriptors": source, "num_descriptions": len(pool),
            "descriptions_per_class_mean": float(np.mean(counts)),
            "class_name_only_top1": _top1(name_test, labels),
            "classname_free": {"real": real, "reassigned": {"top1": spread("top1"),
                                                           "descriptions_only_top1": spread("descriptions_only_top1"),
                                                           "weights": [r["weight"] for r in shuffled]}},
            "with_class_name": {"cbd_top1": evaluate(cbd.scores(v_test), labels, dataset.classnames)["top1"],
                                "waffle_top1": [waffle_metrics["top1"], waffle_metrics.get("top1_std", 0.0)],
                                "waffle_count": 2 * waffle_count},
            "discriminativeness": rows,
            "ranking_quality": quality,
            "splits": {"eval": held.split, "choose": val.split, "fit": fit.split},
        }
        return Record(
            kind="audit",
            dataset={"name": dataset.name, "root": str(dataset.root) if dataset.root else None, "split": held.split,
                     "split_fingerprint": dataset.split_fingerprint(held.split)},
            model={"name": encoder.name, "pretrained": encoder.pretrained, "fingerprint": encoder.fingerprint},
            method={"name": self.name, "params": jsonable_params(self.get_params()), "seeds": list(range(self.seeds))},
            run=ctx.describe(),
            metrics={"classname_free_real_top1": real["top1"],
                     "classname_free_reassigned_top1": results["classname_free"]["reassigned"]["top1"][0],
                     "cbd_top1": results["with_class_name"]["cbd_top1"],
                     "std": "np.std over seeds, ddof=0"},
            counts={"images_encoded": dict(ctx.encoded), "texts_encoded": cache.texts_encoded},
            results=results,
        )


def _default_truth(source: str) -> Path | None:
    """``X_truth.json`` beside a descriptor file ``X.json``, when it exists."""
    path = locate(source)
    candidate = path.with_name(f"{path.stem}_truth{path.suffix}")
    return candidate if path.suffix == ".json" and candidate.is_file() else None


def summary_table(record: Record) -> list[tuple[str, str]]:
    """(row, value) pairs a person reads first."""
    res = record.results
    cf = res["classname_free"]
    fmt = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"  # noqa: E731
    rows = [
        ("class name only", f"{res['class_name_only_top1']:.2f}"),
        (f"classname-free, real descriptions (w={cf['real']['weight']:g} chosen on {res['splits']['choose']})",
         f"{cf['real']['top1']:.2f}"),
        (f"classname-free, randomly reassigned ({record.method['params']['reassignment']}, "
         f"{len(record.method['seeds'])} seeds)", fmt(cf["reassigned"]["top1"])),
        ("descriptions only (w=0), real", f"{cf['real']['descriptions_only_top1']:.2f}"),
        ("descriptions only (w=0), reassigned", fmt(cf["reassigned"]["descriptions_only_top1"])),
        ("CbD with class name, real descriptions", f"{res['with_class_name']['cbd_top1']:.2f}"),
        (f"WaffleCLIP, {res['with_class_name']['waffle_count']} random descriptors",
         fmt(res["with_class_name"]["waffle_top1"])),
    ]
    if "oracle" in cf["real"]:
        o = cf["real"]["oracle"]
        rows.append((f"{o['label']} (w={o['weight']:g})", f"{o['top1']:.2f}"))
    q = res.get("ranking_quality")
    if q:
        rows.append(("discriminativeness ranks true descriptions first: precision@#true",
                     f"{100 * q['precision_at_num_true']:.1f}%"))
        rows.append(("  AUC true vs generic+wrong", f"{q['auc_true_vs_rest']:.3f}"))
    return rows


def plot_discriminativeness(record: Record, path: str | Path) -> None:
    """Per-description discriminativeness, sorted, coloured by kind when a truth file was given (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._io import atomic_path

    rows = record.results["discriminativeness"]
    colours = {"true": "tab:green", "generic": "tab:grey", "wrong": "tab:red", "unknown": "tab:blue"}
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(rows))
    y = np.array([r["discriminativeness"] for r in rows])
    kinds = [r.get("kind", "unknown") for r in rows]
    for kind in dict.fromkeys(kinds):
        sel = np.array([k == kind for k in kinds])
        ax.scatter(x[sel], y[sel], s=6, color=colours.get(kind, "tab:blue"), label=kind)
        hist.hist(y[sel], bins=40, alpha=0.6, color=colours.get(kind, "tab:blue"), label=kind)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("descriptions, most discriminative first")
    ax.set_ylabel("S[d, own class] − mean S[d, other classes]")
    ax.set_title(f"{record.dataset['name']}: per-description discriminativeness "
                 f"({record.results['splits']['fit']} split)")
    ax.legend(title="descriptor is", fontsize=8)
    hist.set_xlabel("discriminativeness")
    hist.set_ylabel("descriptions")
    hist.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
