"""The classification pipeline: dataset → image store → prompt set → scorer → metrics and record.

``ZeroShotClassifier`` is the notebook-sized piece (a prompt set embedded through the text cache);
``classify`` runs one whole evaluation and returns everything it made, including the JSON record that
``zsclip classify --output`` writes.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path, write_json_atomic
from ._version import __version__
from .datasets import Dataset, get_dataset
from .methods import get_method
from .models import Encoder, load_model
from .prompts import PromptSet
from .scoring import Explanation, Scorer, evaluate, explain, topk_indices
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
class ClassificationRun:
    """Everything one evaluation made: inputs, scores, metrics and the JSON record."""

    dataset: Dataset
    split: str
    encoder: Encoder
    store: ImageStore
    classifier: Any  # ZeroShotClassifier (of the first seed, for randomised methods) or a fitted DDS
    seed_scores: list[np.ndarray]  # N × C scores per seed (one entry for deterministic methods)
    metrics: dict[str, Any]
    record: dict[str, Any]

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
    """One seed's metrics as they are; several seeds' as the mean, with ``<metric>_std`` and ``per_seed``."""
    if len(per_seed) == 1:
        return per_seed[0]
    out: dict[str, Any] = {"num_images": per_seed[0]["num_images"], "num_classes": per_seed[0]["num_classes"],
                           "seeds": len(per_seed)}
    for key in SUMMARY_METRICS:
        if key in per_seed[0]:
            values = np.array([m[key] for m in per_seed])
            out[key] = float(values.mean())
            out[f"{key}_std"] = float(values.std(ddof=1))
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


def classify(dataset: str | Dataset, method: str = "classnames", *, dataset_root: str | Path | None = None,
             split: str | None = None, model: str | Encoder | None = None, pretrained: str | None = None,
             device: str = "auto", precision: str = "fp32", store: str | Path | None = None,
             store_dtype: str | None = None, index: str | None = None, batch_size: int = 64, workers: int = 4,
             method_options: dict[str, Any] | None = None, rebuild: bool = False) -> ClassificationRun:
    """Evaluate a zero-shot method on a dataset split and return the run (see ``ClassificationRun``).

    Image embeddings come from the store (built on first use), text embeddings from the text cache, so a
    repeated run encodes nothing; ``record["counts"]`` says what this run encoded and skipped.
    """
    ds = dataset if isinstance(dataset, Dataset) else get_dataset(dataset, dataset_root)
    split = split or ds.default_split
    encoder = model if isinstance(model, Encoder) else encoder_for(ds, model, pretrained, device=device,
                                                                   precision=precision)
    image_store = ImageStore.build(ds, split, encoder, store, dtype=store_dtype, index=index,
                                   batch_size=batch_size, workers=workers, rebuild=rebuild)
    method_obj = get_method(method, **(method_options or {}))
    cache = TextEmbeddingCache(encoder)
    truncated = 0
    other_splits: dict[str, int] = {}  # images a method encoded for its own splits (DDS: train, val)
    if hasattr(method_obj, "fit"):  # per-image methods (DDS) fit on the training/validation splits
        clf: Any = method_obj.fit(ds, encoder, cache, {"dtype": store_dtype, "index": index,
                                                      "batch_size": batch_size, "workers": workers})
        seed_scores = [clf.scores(image_store.embeddings)]
        options = dict(method_obj.options)
        other_splits = dict(method_obj.images_encoded)
    else:
        seeds = getattr(method_obj, "seeds", None)
        prompt_sets = [method_obj.build(ds, seed=s) for s in seeds] if seeds else [method_obj.build(ds)]
        classifiers = [ZeroShotClassifier(ps, encoder, cache) for ps in prompt_sets]
        seed_scores = [c.scores(image_store.embeddings) for c in classifiers]
        clf = classifiers[0]
        options = {k: v for k, v in prompt_sets[0].options.items() if k != "seed"}
        truncated = sum(len(c.truncated) for c in classifiers)
    metrics = aggregate_metrics([evaluate(sc, image_store.labels, ds.classnames) for sc in seed_scores])
    record = {
        "dataset": ds.name,
        "dataset_root": str(ds.root) if ds.root else None,
        "split": split,
        "model": encoder.name,
        "pretrained": encoder.pretrained,
        "model_fingerprint": encoder.fingerprint,
        "method": method,
        "options": options,
        "metrics": metrics,
        "counts": {
            "images": len(image_store),
            "images_encoded": image_store.build_stats.images_encoded,
            "images_encoded_other_splits": other_splits,
            "images_skipped": image_store.build_stats.images_skipped,
            "texts": cache.texts_requested,
            "texts_encoded": cache.texts_encoded,
            "texts_truncated": truncated,
        },
        "store": str(image_store.path),
        "zsclip_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return ClassificationRun(ds, split, encoder, image_store, clf, seed_scores, metrics, record)


def write_record(record: dict[str, Any], path: str | Path) -> None:
    """Write a run record as JSON (atomic)."""
    write_json_atomic(path, record)
