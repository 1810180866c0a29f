"""Runs a search job end to end: data and evaluator, the resumable search, the validation choice, the outputs
(a file ``classify`` reads, its provenance, a fitness plot) and the single test report after the search.

Only ``search_data`` reads images while the search runs (training shots and validation); ``eval_data`` reads
test once, after the job has finished and its choice is written, and only when asked to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_bytes_atomic, write_json_atomic
from ..errors import ZsclipError
from ..records import Record
from .data import SearchData, eval_data, search_data
from .evaluate import FitnessWeights, TemplateSetEvaluator, template_blocks
from .job import Budget, BudgetReached, Job, run_search, stop_message, text_fingerprint

logger = logging.getLogger(__name__)


@dataclass
class SearchSetup:
    """What every search needs: the dataset, the encoder, its text cache and the fitting / choosing data."""

    dataset: Any
    encoder: Any
    cache: Any
    data: SearchData
    shots: int
    seed: int

    @property
    def logit_scale(self) -> float | None:
        return getattr(self.encoder, "logit_scale", None)

    def blocks_for(self, templates: Sequence[str]) -> dict[str, np.ndarray]:
        return template_blocks(templates, self.dataset.classnames, self.cache)

    def base_params(self) -> dict[str, Any]:
        """The parameters every search job shares: dataset, its fitting/choosing splits, model, shots, seed."""
        return {"dataset": self.dataset.name, "classes": len(self.dataset.classnames),
                "data": self.data.provenance, "model": self.encoder.fingerprint, "shots": self.shots,
                "seed": self.seed}


def prepare(dataset: Any, encoder: Any, shots: int = 1, seed: int = 1) -> SearchSetup:
    """The setup of a search on ``dataset`` with ``encoder`` (builds the train and val stores if needed)."""
    from ..stores import TextEmbeddingCache

    return SearchSetup(dataset, encoder, TextEmbeddingCache(encoder), search_data(dataset, encoder, shots, seed),
                       shots, seed)


def validation_top1(setup: SearchSetup, class_weights: np.ndarray) -> float:
    """Top-1 (%) on the choosing split of class weights ``class_weights`` (C × D)."""
    scores = setup.data.choose_features @ np.asarray(class_weights, dtype=np.float32).T
    return float((scores.argmax(1) == setup.data.choose_labels).mean() * 100.0)


def template_weights(setup: SearchSetup, templates: Sequence[str]) -> np.ndarray:
    """Class weights of a template set: the renormalised mean of its texts' embeddings."""
    blocks = setup.blocks_for(templates)
    w = np.sum([blocks[t] for t in dict.fromkeys(templates)], axis=0)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def prompt_weights(setup: SearchSetup, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Class weights of a per-class prompt set (the renormalised mean of each class's prompts, as ``cupl``)."""
    rows = []
    for name in setup.dataset.classnames:
        texts = list(dict.fromkeys(prompts[name]))
        w = setup.cache.encode(texts).mean(0)
        rows.append(w / np.linalg.norm(w))
    return np.stack(rows)


def test_report(setup: SearchSetup, class_weights: np.ndarray) -> dict[str, Any]:
    """The one test evaluation of a finished search's choice (top-1, top-5, mean per-class recall)."""
    from ..scoring import evaluate

    features, labels = eval_data(setup.dataset, setup.encoder)
    metrics = evaluate(np.asarray(features, dtype=np.float32) @ class_weights.T, labels, setup.dataset.classnames)
    return {"split": setup.dataset.default_split, **{k: metrics[k] for k in ("top1", "top5", "mean_per_class_recall")
                                                    if k in metrics}}


def plot_history(history: Sequence[Sequence[float]], path: Path, title: str) -> Path | None:
    """A PNG of best fitness against evaluations; ``None`` (and a warning) without matplotlib.

    Drawn on a bare ``Figure`` (no pyplot): the process's matplotlib backend is left alone, so a notebook that
    runs a search still shows its own plots inline.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no fitness plot (pip install matplotlib)")
        return None
    import io

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if history:
        xs, ys = zip(*history)
        ax.step(xs, ys, where="post")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best fitness (fitting shots)")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes_atomic(path, buf.getvalue())
    return path


def write_output(path: Path, content: str | Mapping[str, Any], provenance: Record,
                 history: Sequence[Sequence[float]], title: str) -> dict[str, str]:
    """Write a result file (text or JSON), its ``.provenance.json`` (a search ``Record``) and its ``.png`` fitness
    plot beside it."""
    if isinstance(content, str):
        write_bytes_atomic(path, content.encode("utf-8"))
    else:
        write_json_atomic(path, dict(content))
    prov_path = path.with_suffix(".provenance.json")
    provenance.write(prov_path)
    plot = plot_history(history, path.with_suffix(".png"), title)
    out = {"file": str(path), "provenance": str(prov_path)}
    if plot:
        out["plot"] = str(plot)
    return out


def provenance(job: Job, state: Mapping[str, Any], setup: SearchSetup, **extra: Any) -> Record:
    """The provenance of a search output as a ``Record`` (kind ``search``): the job's parameters recreate it; the
    best fitness, the budget spent, the data it saw and the choice are what it found."""
    ds = setup.dataset
    return Record(
        kind="search",
        dataset={"name": ds.name, "root": str(ds.root) if ds.root else None, "split": None},
        model={"name": setup.encoder.name, "pretrained": setup.encoder.pretrained,
               "fingerprint": setup.encoder.fingerprint},
        method={"name": job.kind, "params": dict(job.params), "seeds": None},
        metrics={"best_fitness": state["history"][-1][1] if state["history"] else None},
        counts={"evaluations": state["evals"], "llm_calls": state["llm_calls"], "llm_cached": state["llm_cached"],
                "llm_cost_usd": state["llm_cost"]},
        results={"job": str(job.path), "fingerprint": job.fingerprint, "data": setup.data.provenance,
                 "choice": "finalists by training fitness, chosen on the validation images; test never seen",
                 **extra},
    )


def finish_with_test(job: Job, result: dict[str, Any], weights_fn: Callable[[], np.ndarray], setup: SearchSetup,
                     evaluate_test: bool, more: Mapping[str, Callable[[], np.ndarray]] | None = None) -> dict[str, Any]:
    """Write ``result.json`` (the search is over and its choice made); then, when asked and not done before,
    evaluate the choice on test once (``test``; ``more`` adds records such as ``test_stage1``)."""
    fns = {"test": weights_fn, **(more or {})}
    previous = job.result() or {}
    for name in fns:
        if name in previous:
            result[name] = previous[name]
    job.write_result(result)
    if evaluate_test and any(name not in result for name in fns):
        for name, fn in fns.items():
            if name not in result:
                result[name] = test_report(setup, fn())
        job.write_result(result)
    return result


# -- hill-climbing -----------------------------------------------------------------------------------------


def run_hillclimb(setup: SearchSetup, pool: Sequence[str], *, pool_source: str, llm: Any, llm_model: str,
                  k: int = 3, per_call: int = 1, iterations: int = 10, restarts: int = 0,
                  feedback: str = "good+bad", show_scores: bool = False, finalists: int = 3,
                  fitness: FitnessWeights = FitnessWeights(1.0, 0.0, 0.0, 0.0), meta_prompt: str | Path | None = None,
                  domain: str = "object", job_dir: str | Path | None = None, budget: Budget = Budget(),
                  output: str | Path | None = None, evaluate_test: bool = True) -> dict[str, Any]:
    """Run (or resume) a hill-climbing job and return its result (see ``zsclip.search.hillclimb``)."""
    from .hillclimb import HillClimb, check_pool

    pool = check_pool(pool, pool_source)
    evaluator = TemplateSetEvaluator(setup.data.fit_features, setup.data.fit_labels, len(setup.dataset.classnames),
                                     fitness, setup.logit_scale)
    search = HillClimb(pool, evaluator, setup.blocks_for, domain=domain, k=k, per_call=per_call,
                       iterations=iterations, restarts=restarts, feedback=feedback, show_scores=show_scores,
                       seed=setup.seed, meta_prompt=meta_prompt)
    params = {**setup.base_params(), "pool": text_fingerprint(pool), "pool_size": len(pool),
              "pool_source": pool_source, "llm": llm_model, "meta_prompt": text_fingerprint([search.meta_prompt]),
              "k": k, "per_call": per_call, "iterations": iterations, "restarts": restarts, "feedback": feedback,
              "show_scores": show_scores, "fitness": fitness.as_dict(), "domain": domain, "finalists": finalists}
    job = Job.open("hillclimb", params, job_dir)
    if llm is None:
        raise ZsclipError("hill-climbing needs an LLM: pass --llm MODEL and --base-url URL (or set ZSCLIP_LLM_MODEL)")
    outcome = run_search(job, search, budget, llm)
    if not outcome.finished:
        raise BudgetReached(stop_message(job, outcome))
    state = outcome.state
    algo = state["algo"]
    names = search.finalists(algo, finalists)
    val = {t: validation_top1(setup, template_weights(setup, [t])) for t in names}
    chosen = max(names, key=lambda t: val[t])  # ties: the better training fitness (max keeps the first)
    path = Path(output).expanduser() if output else job.path / "template.txt"
    prov = provenance(job, state, setup, chosen=chosen, finalists=[{"template": t, "validation_top1": val[t]}
                                                                  for t in names],
                      failed_iterations=algo["failed_iterations"], rejected_replies=algo["rejected_replies"])
    header = (f"# zsclip search hillclimb: best of {len(names)} finalists on validation; "
              f"see {path.stem}.provenance.json\n")
    outputs = write_output(path, header + chosen + "\n", prov, state["history"], "hill-climbing")
    result = {"kind": "hillclimb", "outputs": outputs, "chosen": [chosen],
              "validation": {"top1": val[chosen], "finalists": val},
              "best_training": search.ranked(algo)[0], "failed_iterations": algo["failed_iterations"],
              "budget_spent": {**prov.counts}}
    return finish_with_test(job, result, lambda: template_weights(setup, [chosen]), setup, evaluate_test)


# -- ProAPO ----------------------------------------------------------------------------------------------


def read_synonyms(path: str | Path, classnames: Sequence[str]) -> list[list[str]]:
    """Synonyms per class (class name first) from a REAL-format file (``{"0": {"name", "alternates"}}``) or a
    ``{classname: [synonym, ...]}`` file, matched to the dataset's classes by name."""
    from .._io import read_json
    from ..generate import merge_synonyms
    from ..prompts import match_descriptors

    data = read_json(path, "synonym file")
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "name" in v for v in data.values()):
        data = {v["name"]: list(v.get("alternates") or {}) for v in data.values()}
    if not isinstance(data, dict):
        raise ZsclipError(f"synonym file {path}: expected REAL's format or {{classname: [synonym, ...]}}")
    matched = match_descriptors(data, classnames, f"synonym file {path}")
    return [merge_synonyms(c, [s for s in syn if isinstance(s, str)]) for c, syn in zip(classnames, matched)]


def _replace_name(description: str, classname: str, synonym: str) -> str:
    import re

    return re.sub(re.escape(classname), synonym, description, flags=re.IGNORECASE)


def stage2_items(classnames: Sequence[str], synonyms: Sequence[Sequence[str]],
                 descriptions: Sequence[Sequence[str]]) -> list[list[list[str | None]]]:
    """ProAPO's stage-2 items per class, in the order a job's assignments index them: each synonym alone
    (``[synonym, None]``), then each synonym with each description (the class name inside replaced by it)."""
    return [[[s, None] for s in synonyms[c]] + [[s, _replace_name(d, name, s)] for s in synonyms[c]
                                                 for d in descriptions[c]]
            for c, name in enumerate(classnames)]


def stage2_prompts(classnames: Sequence[str], templates: Sequence[str], items: Sequence[Sequence[Sequence[Any]]],
                   assignment: Sequence[Sequence[int]]) -> dict[str, list[str]]:
    """The per-class prompts of a stage-2 assignment (item ids per class; e.g. a snapshot in a job's state)."""
    from .proapo import item_texts

    return {name: [t for i in assignment[c] for t in item_texts(templates, *items[c][i])]
            for c, name in enumerate(classnames)}


def run_proapo(setup: SearchSetup, library: Sequence[str], *, library_source: str, epochs: int = 8,
               max_prompts: int | None = None, fitness: FitnessWeights = FitnessWeights(), stage2: bool = True,
               synonyms: Sequence[Sequence[str]] | None = None, synonyms_source: str = "class names",
               descriptions: Sequence[Sequence[str]] | None = None, descriptions_source: str = "none",
               descriptions_per_class: int = 5, llm: Any = None, llm_model: str | None = None,
               domain: str = "object", job_dir: str | Path | None = None, budget: Budget = Budget(),
               output_dir: str | Path | None = None, evaluate_test: bool = True) -> dict[str, Any]:
    """Run (or resume) a ProAPO job and return its result (see ``zsclip.search.proapo``).

    Synonyms come from ``synonyms`` (class name first), else from ``llm`` (REAL's question, once per class,
    through the LLM cache, inside the job's budget), else the class names alone.
    """
    from ..generate import generate_synonyms
    from .evaluate import ClassPromptEvaluator
    from .proapo import ProAPO, item_texts

    classnames = list(setup.dataset.classnames)
    n = len(classnames)
    descs = [list(d)[:descriptions_per_class] for d in descriptions] if descriptions is not None else [[]] * n
    evaluator = TemplateSetEvaluator(setup.data.fit_features, setup.data.fit_labels, n, fitness, setup.logit_scale)
    cache: dict[str, Any] = {}

    def stage2_inputs(templates: list[str], ctx: Any) -> tuple[list[list[np.ndarray]], list[list[Any]]]:
        key = json.dumps(templates)
        if key in cache:
            return cache[key]
        if synonyms is not None:
            syn = [list(s) for s in synonyms]
        elif ctx is not None and ctx.llm is not None:
            syn = [generate_synonyms(classnames, ctx.llm, domain=domain).per_class[c] for c in classnames] \
                if "synonyms" not in cache else cache["synonyms"]
            cache["synonyms"] = syn
        else:
            syn = [[c] for c in classnames]
        labels = stage2_items(classnames, syn, descs)
        texts = [t for entries in labels for s, d in entries for t in item_texts(templates, s, d)]
        emb = setup.cache.encode(texts)
        items, at, per = [], 0, len(templates)
        for entries in labels:
            rows = []
            for _ in entries:
                rows.append(emb[at:at + per].sum(0))
                at += per
            items.append(rows)
        cache[key] = (items, labels)
        return cache[key]

    def make_stage2(items: list[np.ndarray]) -> ClassPromptEvaluator:
        return ClassPromptEvaluator(setup.data.fit_features, setup.data.fit_labels, items, fitness, setup.logit_scale)

    def validate_templates(templates: Sequence[str]) -> float:
        return validation_top1(setup, template_weights(setup, templates))

    search = ProAPO(library, classnames, evaluator, setup.blocks_for, validate_templates, epochs=epochs,
                    max_prompts=max_prompts, seed=setup.seed, stage2=stage2, stage2_inputs=stage2_inputs,
                    make_stage2_evaluator=make_stage2)
    params = {**setup.base_params(), "library": text_fingerprint(library), "library_size": len(library),
              "library_source": library_source, "epochs": epochs, "max_prompts": max_prompts,
              "fitness": fitness.as_dict(), "stage2": stage2, "domain": domain,
              "synonyms": synonyms_source if synonyms is not None else (f"llm {llm_model}" if llm else "class names"),
              "synonyms_hash": (text_fingerprint([json.dumps(list(map(list, synonyms)))])
                                if synonyms is not None else None),
              "descriptions": descriptions_source, "descriptions_per_class": descriptions_per_class,
              "descriptions_hash": text_fingerprint([json.dumps(descs)])}
    job = Job.open("proapo", params, job_dir)
    outcome = run_search(job, search, budget, llm)
    if not outcome.finished:
        raise BudgetReached(stop_message(job, outcome))
    state = outcome.state
    algo = state["algo"]
    folder = Path(output_dir).expanduser() if output_dir else job.path
    stage1 = algo["stage1"]
    prov = provenance(job, state, setup, stage1=stage1)
    header = ("# zsclip search proapo, stage 1: best of the archive's top 4 on validation; "
              "see templates.provenance.json\n")
    outputs = write_output(folder / "templates.txt", header + "\n".join(stage1["templates"]) + "\n", prov,
                           state["history"], "ProAPO")
    result: dict[str, Any] = {"kind": "proapo", "outputs": outputs, "chosen": stage1["templates"],
                              "validation": {"top1": stage1["finalists"][[f["templates"] for f in
                                                                          stage1["finalists"]].index(stage1["templates"])]
                                             ["validation_top1"], "stage1_finalists": stage1["finalists"]},
                              "budget_spent": {**prov.counts}}
    weights_fn: Callable[[], np.ndarray] = lambda: template_weights(setup, stage1["templates"])  # noqa: E731
    if stage2 and algo["s2"] and algo["s2"]["snapshots"]:
        _, labels = stage2_inputs(stage1["templates"], None)
        s2 = algo["s2"]

        def prompts_of(assignment: Sequence[Sequence[int]]) -> dict[str, list[str]]:
            return stage2_prompts(classnames, stage1["templates"], labels, assignment)

        scored = [(validation_top1(setup, prompt_weights(setup, prompts_of(snap["assignment"]))), snap)
                  for snap in s2["snapshots"]]
        best_val, best = max(scored, key=lambda vs: (vs[0], vs[1]["fitness"]))
        prompts = prompts_of(best["assignment"])
        prov2 = provenance(job, state, setup, stage1_templates=stage1["templates"], chosen=best["after"],
                           snapshots=[{"after": s["after"], "training_fitness": s["fitness"], "validation_top1": v}
                                      for v, s in scored], groups=s2["groups"])
        result["more_outputs"] = [write_output(folder / "prompts.json", prompts, prov2, state["history"], "ProAPO")]
        result["stage2"] = {"chosen": best["after"], "validation_top1": best_val, "groups": s2["groups"],
                            "snapshots": prov2.results["snapshots"]}
        result["validation"]["top1"] = best_val
        stage1_fn = weights_fn
        return finish_with_test(job, result, lambda: prompt_weights(setup, prompts), setup, evaluate_test,
                                {"test_stage1": stage1_fn})
    return finish_with_test(job, result, weights_fn, setup, evaluate_test)
