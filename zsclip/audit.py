"""Does a description set carry meaning? The controls of METHODS.md §2–3 in one audit.

On a held-out split (``test`` by default; the class-name weight ``w`` is chosen on ``val``):

* classname-free scoring, ``s_c(x) = w·v·e("a photo of a {c}.") + mean_{d∈D_c} v·e(d)``, descriptions encoded
  without the class name; the test-set-oracle ``w`` only when asked, and labelled as an oracle;
* the same with the descriptions randomly reassigned across classes (same count per class, drawn from the
  pool of all descriptions; several seeds, mean ± std) — if real beats reassigned, the descriptions say
  something about their classes;
* descriptions alone (``w = 0``), real and reassigned;
* CbD with the class name against WaffleCLIP random descriptors at the same count;
* per-description discriminativeness on the selection split (``train``): ``S[d, c] − mean_{j≠c} S[d, j]``,
  where ``S[d, c]`` is the mean cosine of description ``d`` with class ``c``'s images; low or negative
  values flag generic and wrong descriptions. With a truth file (``{class: [{"descriptor", "kind"}]}``,
  kinds true/generic/wrong) the audit reports how well this ranking puts the true ones first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import read_json
from ._version import __version__
from .datasets import Dataset
from .methods import DescriptorPrompts, WafflePrompts
from .methods.dds import selection_means
from .methods.descriptions import resolve_descriptors
from .models import Encoder
from .paths import locate
from .pipeline import ZeroShotClassifier, aggregate_metrics
from .prompts import format_template, normalise_descriptor
from .scoring import evaluate
from .stores import ImageStore, TextEmbeddingCache

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


def _pick_weight(name_scores: np.ndarray, desc_scores: np.ndarray, labels: np.ndarray,
                 grid: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The ``w`` of ``grid`` with the best top-1 (ties: the smaller ``w``), and the top-1 of each."""
    results = {f"{w:g}": _top1(w * name_scores + desc_scores, labels) for w in grid}
    best = max(grid, key=lambda w: (results[f"{w:g}"], -w))
    return float(best), results


def reassign(per_class: Sequence[Sequence[int]], rng: np.random.Generator) -> list[list[int]]:
    """The same descriptions shuffled across classes, each class keeping its number of descriptions."""
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


def audit_descriptions(dataset: Dataset, encoder: Encoder, descriptors: str | Path | None = None, *,
                       split: str = "test", val_split: str = "val", selection_split: str = "train",
                       seeds: int = 5, template: str = "a photo of a {}.", truth: str | Path | None = None,
                       oracle: bool = False, store_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the audit (see the module docstring) and return a JSON-able record."""
    store_options = store_options or {}
    cache = TextEmbeddingCache(encoder)
    per_class_text, source = resolve_descriptors(dataset, descriptors)
    per_class_text = [list(dict.fromkeys(d for d in map(normalise_descriptor, ds) if d)) for ds in per_class_text]
    pool = list(dict.fromkeys(d for ds in per_class_text for d in ds))
    index = {d: i for i, d in enumerate(pool)}
    per_class = [[index[d] for d in ds] for ds in per_class_text]
    pool_emb = cache.encode(pool)
    name_emb = cache.encode([format_template(template, c) for c in dataset.classnames])
    stores = {s: ImageStore.build(dataset, s, encoder, **store_options) for s in {split, val_split, selection_split}}
    held, val = stores[split], stores[val_split]
    labels, val_labels = np.asarray(held.labels), np.asarray(val.labels)
    v_test = np.asarray(held.embeddings, dtype=np.float32)
    v_val = np.asarray(val.embeddings, dtype=np.float32)
    name_test, name_val = v_test @ name_emb.T, v_val @ name_emb.T
    dim = pool_emb.shape[1]

    def classname_free(assign: Sequence[Sequence[int]]) -> dict[str, Any]:
        means = _class_means(pool_emb, assign, dim)
        w, grid = _pick_weight(name_val, v_val @ means.T, val_labels, WEIGHT_GRID)
        desc_test = v_test @ means.T
        row: dict[str, Any] = {"weight": w, "weight_grid_val_top1": grid,
                               "top1": _top1(w * name_test + desc_test, labels),
                               "descriptions_only_top1": _top1(desc_test, labels)}
        if oracle:
            w_o, grid_o = _pick_weight(name_test, desc_test, labels, WEIGHT_GRID)
            row["oracle"] = {"label": "ORACLE: w chosen on the test split", "weight": w_o, "top1": grid_o[f"{w_o:g}"]}
        return row

    real = classname_free(per_class)
    shuffled = [classname_free(reassign(per_class, np.random.default_rng(s))) for s in range(seeds)]

    def mean_std(key: str) -> list[float]:
        vals = np.array([r[key] for r in shuffled])
        return [float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0]

    cbd = ZeroShotClassifier(DescriptorPrompts(descriptors=dict(zip(dataset.classnames, per_class_text)))
                             .build(dataset), encoder, cache)
    counts = [len(ids) for ids in per_class]
    waffle_count = max(1, round(float(np.mean(counts)) / 2))
    waffle = WafflePrompts(count=waffle_count, seeds=tuple(range(seeds)), before="", after="")
    waffle_runs = [evaluate(ZeroShotClassifier(waffle.build(dataset, seed=s), encoder, cache).scores(v_test),
                            labels, dataset.classnames) for s in range(seeds)]
    waffle_metrics = aggregate_metrics(waffle_runs)

    S = pool_emb @ selection_means(stores[selection_split], len(dataset.classnames), 1000)[0].T  # |P| × C
    rows = []
    for c, ids in enumerate(per_class):
        for d in ids:
            others = np.delete(S[d], c)
            rows.append({"class": dataset.classnames[c], "descriptor": pool[d],
                         "discriminativeness": float(S[d, c] - others.mean()),
                         "rank_of_own_class": int((S[d] > S[d, c]).sum()) + 1})
    rows.sort(key=lambda r: -r["discriminativeness"])
    truth_path = Path(truth) if truth else _default_truth(source)
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
    return {
        "dataset": dataset.name, "split": split, "val_split": val_split, "selection_split": selection_split,
        "model": encoder.name, "model_fingerprint": encoder.fingerprint, "descriptors": source,
        "template": template, "seeds": seeds, "zsclip_version": __version__,
        "num_descriptions": len(pool), "descriptions_per_class_mean": float(np.mean(counts)),
        "class_name_only_top1": _top1(name_test, labels),
        "classname_free": {"real": real, "reassigned": {"top1": mean_std("top1"),
                                                       "descriptions_only_top1": mean_std("descriptions_only_top1"),
                                                       "weights": [r["weight"] for r in shuffled]}},
        "with_class_name": {"cbd_top1": evaluate(cbd.scores(v_test), labels, dataset.classnames)["top1"],
                            "waffle_top1": [waffle_metrics["top1"], waffle_metrics.get("top1_std", 0.0)],
                            "waffle_count": 2 * waffle_count},
        "discriminativeness": rows,
        "ranking_quality": quality,
    }


def _default_truth(source: str) -> Path | None:
    """``X_truth.json`` beside a descriptor file ``X.json``, when it exists."""
    path = locate(source)
    candidate = path.with_name(f"{path.stem}_truth{path.suffix}")
    return candidate if path.suffix == ".json" and candidate.is_file() else None


def summary_table(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(row, value) pairs a person reads first."""
    cf = record["classname_free"]
    fmt = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"  # noqa: E731
    rows = [
        ("class name only", f"{record['class_name_only_top1']:.2f}"),
        (f"classname-free, real descriptions (w={cf['real']['weight']:g} chosen on {record['val_split']})",
         f"{cf['real']['top1']:.2f}"),
        (f"classname-free, randomly reassigned ({record['seeds']} seeds)", fmt(cf["reassigned"]["top1"])),
        ("descriptions only (w=0), real", f"{cf['real']['descriptions_only_top1']:.2f}"),
        ("descriptions only (w=0), reassigned", fmt(cf["reassigned"]["descriptions_only_top1"])),
        ("CbD with class name, real descriptions", f"{record['with_class_name']['cbd_top1']:.2f}"),
        (f"WaffleCLIP, {record['with_class_name']['waffle_count']} random descriptors",
         fmt(record["with_class_name"]["waffle_top1"])),
    ]
    if "oracle" in cf["real"]:
        o = cf["real"]["oracle"]
        rows.append((f"{o['label']} (w={o['weight']:g})", f"{o['top1']:.2f}"))
    q = record.get("ranking_quality")
    if q:
        rows.append(("discriminativeness ranks true descriptions first: precision@#true",
                     f"{100 * q['precision_at_num_true']:.1f}%"))
        rows.append(("  AUC true vs generic+wrong", f"{q['auc_true_vs_rest']:.3f}"))
    return rows


def plot_discriminativeness(record: dict[str, Any], path: str | Path) -> None:
    """Per-description discriminativeness, sorted, coloured by kind when a truth file was given (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._io import atomic_path

    rows = record["discriminativeness"]
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
    ax.set_title(f"{record['dataset']}: per-description discriminativeness ({record['selection_split']} split)")
    ax.legend(title="descriptor is", fontsize=8)
    hist.set_xlabel("discriminativeness")
    hist.set_ylabel("descriptions")
    hist.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
