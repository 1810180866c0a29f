"""The classification pipeline: dataset → run context (image stores by role) → method → scorer → record.

``ZeroShotClassifier`` is the notebook-sized piece (a prompt set embedded through the text cache);
``run_method`` fits or builds any registered method on a run context (every seed of a randomised one);
``classify`` runs one whole evaluation and returns everything it made, including the ``Record`` that
``zsclip classify --output`` writes; ``classify_from_record`` re-runs a record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path
from .context import RunContext
from .datasets import Dataset, get_dataset
from .errors import ZsclipError
from .methods import Method, jsonable_params, make_method
from .models import Encoder, load_model
from .prompts import PromptSet
from .records import Record
from .scoring import STD_CONVENTION, Explanation, Scorer, evaluate, explain, mean_std, topk_indices
from .stores import ImageStore, TextEmbeddingCache

log = logging.getLogger(__name__)


class ZeroShotClassifier:
    """A prompt set, embedded by ``encoder`` through the text cache, ready to score image embeddings.

    Only texts missing from the cache are encoded (``texts_encoded`` counts them). Texts longer than the
    tokenizer's context length are reported with a warning, since their tail is cut.
    """

    def __init__(self, prompt_set: PromptSet, encoder: Encoder, text_cache: TextEmbeddingCache | None = None,
                 chunk_size: int = 4096) -> None:
        self.prompt_set = prompt_set
        self.encoder = encoder
        cache = text_cache if text_cache is not None else TextEmbeddingCache(encoder)
        before = cache.texts_encoded
        self.truncated = encoder.truncated(prompt_set.texts)
        if self.truncated:
            log.warning("%d of %d texts exceed the model's context length of %d tokens and are truncated, e.g. %r",
                        len(self.truncated), len(prompt_set.texts), encoder.context_length, self.truncated[0])
        self.scorer = Scorer(prompt_set, cache.encode(prompt_set.texts), chunk_size=chunk_size)
        self.texts_encoded = cache.texts_encoded - before

    @property
    def classnames(self) -> tuple[str, ...]:
        return self.prompt_set.classnames

    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        """``N × C`` class scores (cosine units)."""
        return self.scorer.scores(image_embeddings)

    def predict(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Predicted class index per image."""
        return self.scores(image_embeddings).argmax(axis=1)

    def explain(self, image_embedding: np.ndarray, true_label: int | None = None) -> Explanation:
        """Each text's similarity for the predicted, true and runner-up classes of one image."""
        return explain(self.scorer, image_embedding, true_label)


@dataclass
class MethodRun:
    """A method made ready on a run context: one classifier per seed, with the facts for the record."""

    method: Method
    seeds: list[int] | None
    classifiers: list[Any]
    fit_info: dict[str, Any]
    texts_truncated: int
    fit_seconds: float


def _seed_list(method: Method, seeds: int | Sequence[int] | None) -> list[int] | None:
    if not method.randomised:
        if seeds is not None:
            raise ZsclipError(f"--seeds applies to randomised methods; {method.name} is deterministic")
        return None
    base = int(getattr(method, "seed", 0))
    if seeds is None:
        return list(range(base, base + method.default_seeds))
    if isinstance(seeds, int):
        if seeds < 1:
            raise ZsclipError(f"seeds must be ≥ 1 (the number of seeds to run); got {seeds}")
        return list(range(base, base + seeds))
    seed_list = [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list) or min(seed_list) < 0:
        raise ZsclipError(f"seeds must be a non-empty list of distinct seeds ≥ 0; got {list(seeds)}")
    return seed_list


def run_method(ctx: RunContext, method: Method, seeds: int | Sequence[int] | None = None) -> MethodRun:
    """Build (prompt method) or fit (fitted method) ``method`` on ``ctx`` once per seed.

    ``seeds`` of a randomised method: a list of seeds, or a count ``n`` meaning the method's ``seed`` parameter
    and the ``n − 1`` seeds after it (default count: the method's ``default_seeds``).

    Fitting happens in the context's fitting phase, so a method that asks for the ``eval`` role raises.
    """
    method.check_params()
    seed_list = _seed_list(method, seeds)
    instances = [method] if seed_list is None else [type(method)(**{**method.get_params(), "seed": s})
                                                    for s in seed_list]
    start = time.perf_counter()
    classifiers: list[Any] = []
    fit_info: dict[str, Any] = {}
    truncated = 0
    for inst in instances:
        if method.kind == "fitted":
            if ctx.phase != "fit":
                raise ZsclipError("run_method fits in the context's fitting phase, not inside ctx.evaluating()")
            inst.fit(ctx)
            classifiers.append(inst)
            info = dict(inst.fit_info_)
        else:
            prompt_set = inst.build(ctx)
            clf = ZeroShotClassifier(prompt_set, ctx.encoder, ctx.text_cache)
            classifiers.append(clf)
            truncated += len(clf.truncated)
            info = dict(prompt_set.info)
        if not fit_info:
            fit_info = info
        elif seed_list is not None:  # per-seed facts that differ are kept per seed
            for key, value in info.items():
                if fit_info.get(key) != value:
                    fit_info.setdefault("per_seed", {}).setdefault(key, []).append(value)
    return MethodRun(method, seed_list, classifiers, fit_info, truncated, time.perf_counter() - start)


@dataclass
class ClassificationRun:
    """Everything one evaluation made: inputs, scores, metrics and the record."""

    dataset: Dataset
    split: str
    encoder: Encoder
    store: ImageStore
    classifier: Any  # the first seed's ZeroShotClassifier, or the fitted method
    seed_scores: list[np.ndarray]  # N × C scores per seed (one entry for deterministic methods)
    metrics: dict[str, Any]
    record: Record
    context: RunContext

    @property
    def scores(self) -> np.ndarray:
        """The ``N × C`` class scores (of the first seed, for randomised methods)."""
        return self.seed_scores[0]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.store.labels)

    def explain(self, row: int) -> Explanation:
        """Explanation for the store's ``row``-th image, with its true label."""
        return self.classifier.explain(np.asarray(self.store.embeddings[row]), int(self.store.labels[row]))

    def write_predictions(self, path: str | Path, k: int = 5) -> None:
        """Per-image predictions and the top-``k`` classes with scores, as parquet (atomic)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        top = topk_indices(self.scores, k)
        top_scores = np.take_along_axis(self.scores, top, axis=1)
        names = np.asarray(self.classifier.classnames, dtype=object)
        table = pa.table({
            "index": pa.array(self.store.sample_indices, pa.int64()),
            "path": pa.array(self.store.paths, pa.string()),
            "label": pa.array(self.labels, pa.int32()),
            "prediction": pa.array(top[:, 0], pa.int32()),
            "predicted_class": pa.array(names[top[:, 0]].tolist(), pa.string()),
            "correct": pa.array(top[:, 0] == self.labels, pa.bool_()),
            "topk": pa.array(top.tolist(), pa.list_(pa.int32())),
            "topk_scores": pa.array(top_scores.tolist(), pa.list_(pa.float32())),
        })
        with atomic_path(Path(path), suffix=".parquet") as tmp:
            pq.write_table(table, tmp)


SUMMARY_METRICS = ("top1", "top5", "mean_per_class_recall")


def aggregate_metrics(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One seed's metrics as they are; several seeds' as the mean, with ``<metric>_std`` (``mean_std``: ddof = 0)
    and ``per_seed``."""
    if len(per_seed) == 1:
        return per_seed[0]
    out: dict[str, Any] = {"num_images": per_seed[0]["num_images"], "num_classes": per_seed[0]["num_classes"],
                           "seeds": len(per_seed), "std": STD_CONVENTION}
    for key in SUMMARY_METRICS:
        if key in per_seed[0]:
            out[key], out[f"{key}_std"] = mean_std([m[key] for m in per_seed])
    out["per_class_accuracy"] = {name: float(np.mean([m["per_class_accuracy"][name] for m in per_seed]))
                                 for name in per_seed[0]["per_class_accuracy"]}
    out["per_seed"] = [{k: m[k] for k in SUMMARY_METRICS if k in m} for m in per_seed]
    return out


def default_model(dataset: Dataset, model: str | None, pretrained: str | None) -> tuple[str, str | None]:
    """The model to use when none is given: the dataset card's, else OpenAI's ViT-B-32."""
    if model is None:
        model = str(dataset.card.get("model", "ViT-B-32"))
        if pretrained is None:
            pretrained = dataset.card.get("pretrained", "openai")  # type: ignore[assignment]
    elif pretrained is None and ":" not in model and model != "toyworld":
        pretrained = "openai"
    return model, pretrained


def encoder_for(dataset: Dataset, model: str | None = None, pretrained: str | None = None, *,
                device: str = "auto", precision: str = "fp32") -> Encoder:
    """Load ``model`` (default: the dataset card's, see ``default_model``) for ``dataset``."""
    name, pre = default_model(dataset, model, pretrained)
    return load_model(name, pre, device=device, precision=precision)


def classify(dataset: str | Dataset, method: str | Method = "classnames", *, params: dict[str, Any] | None = None,
             seeds: int | Sequence[int] | None = None, dataset_root: str | Path | None = None,
             split: str | None = None, model: str | Encoder | None = None, pretrained: str | None = None,
             device: str = "auto", precision: str = "fp32", store: str | Path | None = None,
             store_dtype: str | None = None, index: str | None = None, batch_size: int = 64, workers: int = 4,
             shots: int | None = None, shot_seed: int = 0, llm: Any = None,
             rebuild: bool = False) -> ClassificationRun:
    """Evaluate a method on a dataset split and return the run (see ``ClassificationRun``).

    ``method`` is a registered name (with ``params``) or a method object; ``seeds`` (a count or a list) applies
    to randomised methods (default: the method's ``default_seeds``). Image embeddings come from the stores
    (built on first use), text embeddings from the text cache, so a repeated run encodes nothing;
    ``record.counts`` says what this run encoded and skipped, per split. ``store_dtype`` / ``index`` default to
    what an existing store has (else float16 / Flat); ``rebuild`` re-encodes every store the run uses, once.
    """
    t0 = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else get_dataset(dataset, dataset_root)
    method_obj = method if isinstance(method, Method) else make_method(method, **(params or {}))
    if isinstance(method, Method) and params:
        method_obj.set_params(**params)
    encoder = model if isinstance(model, Encoder) else encoder_for(ds, model, pretrained, device=device,
                                                                   precision=precision)
    ctx = RunContext(ds, encoder, llm=llm, eval_split=split or ds.default_split, eval_store_path=store,
                     store_options={"dtype": store_dtype, "index": index, "batch_size": batch_size,
                                    "workers": workers, "rebuild": rebuild}, shots=shots, shot_seed=shot_seed)
    prepared = run_method(ctx, method_obj, seeds)
    t_score = time.perf_counter()
    with ctx.evaluating():
        eval_store = ctx.store("eval")
        seed_scores = [clf.scores(eval_store.embeddings) for clf in prepared.classifiers]
    eval_split = ctx.roles["eval"]
    metrics = aggregate_metrics([evaluate(sc, eval_store.labels, ds.classnames) for sc in seed_scores])
    cache = ctx.text_cache
    record = Record(
        kind="classify",
        dataset={"name": ds.name, "root": str(ds.root) if ds.root else None, "split": eval_split,
                 "split_fingerprint": ds.split_fingerprint(eval_split), "info": ds.describe()},
        model={"name": encoder.name, "pretrained": encoder.pretrained, "fingerprint": encoder.fingerprint},
        method={"name": method_obj.name, "params": jsonable_params(method_obj.get_params()),
                "seeds": prepared.seeds},
        run={"store_dtype": eval_store.manifest.get("dtype"), "index": eval_store.manifest.get("index"),
             **ctx.describe()},
        fit_info=prepared.fit_info,
        metrics=metrics,
        counts={"images": len(eval_store), "images_encoded": dict(ctx.encoded),
                "images_skipped": dict(ctx.skipped), "texts": cache.texts_requested,
                "texts_encoded": cache.texts_encoded, "texts_truncated": prepared.texts_truncated},
        timings={"fit_seconds": round(prepared.fit_seconds, 3),
                 "score_seconds": round(time.perf_counter() - t_score, 3),
                 "total_seconds": round(time.perf_counter() - t0, 3)},
        results={"store": str(eval_store.path)},
    )
    return ClassificationRun(ds, eval_split, encoder, eval_store, prepared.classifiers[0], seed_scores, metrics,
                             record, ctx)


def classify_from_record(record: Record | str | Path, **overrides: Any) -> ClassificationRun:
    """Re-run a classify record: same dataset, split, model, method parameters, seeds and store settings."""
    rec = record if isinstance(record, Record) else Record.read(record)
    if rec.kind != "classify":
        raise ZsclipError(f"--from-record re-runs classify records; this one is a {rec.kind!r} record")
    model, pretrained = rec.model.get("name"), rec.model.get("pretrained")
    if model == "toyworld" or (model or "").startswith(("local-dir:", "hf-hub:")):
        pretrained = None
    kwargs: dict[str, Any] = {
        "params": dict(rec.method.get("params") or {}), "seeds": rec.method.get("seeds"),
        "dataset_root": rec.dataset.get("root"), "split": rec.dataset.get("split"), "model": model,
        "pretrained": pretrained, "store_dtype": rec.run.get("store_dtype", "float16"),
        "index": rec.run.get("index", "Flat"), "shots": rec.run.get("shots"),
        "shot_seed": rec.run.get("shot_seed") or 0,
    }
    kwargs.update(overrides)
    run = classify(rec.dataset["name"], rec.method["name"], **kwargs)
    expected = rec.dataset.get("split_fingerprint")
    if expected and run.record.dataset["split_fingerprint"] != expected:
        log.warning("the split's samples changed since the record was made (fingerprint %s, now %s)", expected,
                    run.record.dataset["split_fingerprint"])
    if rec.model.get("fingerprint") and run.encoder.fingerprint != rec.model["fingerprint"]:
        log.warning("the model's weights differ from the record's (fingerprint %s, now %s)",
                    rec.model["fingerprint"], run.encoder.fingerprint)
    return run


# -- library helpers that run the pipeline (used by description and synonym generation) ----------------------

def zero_shot_confusions(dataset: Dataset, model: str | Encoder | None, pretrained: str | None,
                         k: int) -> dict[str, list[str]]:
    """The ``k`` most-confused classes of every class, from a zero-shot class-name run on the ``fit`` role's split
    (the training split; the evaluation split is never looked at)."""
    from .generate import confusions_from_scores

    encoder = model if isinstance(model, Encoder) else encoder_for(dataset, model, pretrained)
    ctx = RunContext(dataset, encoder)
    clf = run_method(ctx, make_method("classnames")).classifiers[0]
    fit = ctx.features("fit")
    return confusions_from_scores(clf.scores(fit.embeddings), fit.labels, dataset.classnames, k)


def clip_text_classifier(dataset: Dataset, encoder: Encoder) -> Callable[[list[str]], np.ndarray]:
    """REAL's synonym check as a function: texts → the class whose "a photo of a {classname}." prompt their CLIP
    text embedding is closest to."""
    classifier = ZeroShotClassifier(make_method("classnames").build(dataset), encoder)

    def classify_texts(texts: list[str]) -> np.ndarray:
        return classifier.predict(encoder.encode_texts(texts))

    return classify_texts
