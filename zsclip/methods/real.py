"""REAL-Prompt and REAL-Linear (Parashar et al., CVPR 2024; METHODS.md §6), on any caption corpus.

``real-prompt`` (prompt method): each class name is replaced by its most frequent name in the captions
(``zsclip.real.choose_name``: relaxed word-set rule, ``strict`` for the other), then plain zero-shot with the
dataset's templates. Names and counts come from a REAL metrics file (``metrics``; default the dataset card's
``synonyms``) or from a count over a corpus (``corpus``). The record's fit info lists every replacement.

``real-linear`` (fitted method): per class, corpus rows retrieved by caption string match (``retrieval=string``,
REAL's) or by the nearest corpus images to the class's prompt embedding through a FAISS index
(``retrieval=knn``), ranked by caption–name-prompt similarity, top ``n``; a bias-free linear head initialised
from REAL-Prompt's zero-shot weights is trained on their image embeddings (read from the corpus's ``img_emb``,
no pixels; a corpus without ``img_emb`` has its retrieved images, named by its ``image_path`` column, encoded once
into image stores, ``zsclip.real.corpus_image_features``) and the REAL-Prompt names' single-template text
features, then mixed with the zero-shot head (WiSE-FT, ``alpha``). Its training data are the retrieved corpus
images only: it never reads the dataset's splits. The retrieved set (row, caption, score) and the heads are saved
under ``<zsclip cache>/real`` keyed by the corpus manifest, the names, the model and the parameters, and reused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ZsclipError
from ..paths import cache_display
from ..prompts import PromptSet, format_template, load_templates
from .base import Method, Param, dataset_of, register_method

log = logging.getLogger(__name__)

_TEMPLATES_DOC = ("the dataset's templates: ensemble (the card's, else CLIP's 80), simple, a template file, a "
                  "literal with {}, or a list")
_METRICS_DOC = ("a REAL metrics file with counts (`zsclip corpus count`), or with corpus= a synonym file whose "
                "names are counted; None: the dataset card's synonyms file")
_CORPUS_DOC = "a caption corpus folder (LAION metadata shards or a clip-retrieval folder)"


def retrieval_names(official: str, names: Sequence[str], subset_names: str) -> list[str]:
    """The names a class retrieves with: all of them (``keep``), or without those whose words are a strict
    subset of the official name's (``drop``: a genus word names every species of the genus)."""
    from ..corpus_count import phrase_of

    if subset_names == "keep":
        return list(names)
    words = set(phrase_of(official))
    return [n for n in names if n == official or not set(phrase_of(n)) < words]


def _templates(spec: str | Sequence[str], card: Any) -> list[str]:
    return load_templates(spec, card) if isinstance(spec, str) else list(spec)


def _real_prompt_set(dataset: Any, metrics: str | None, corpus: str | None, templates: str | Sequence[str],
                     strict: bool, keep_official: bool = False) -> tuple[PromptSet, list[str], list[Any]]:
    from ..real import replacements, resolve_names

    counts, source = resolve_names(dataset, metrics, corpus)
    chosen, changed = replacements(dataset.classnames, counts, strict)
    temps = _templates(templates, dataset.card)
    per_class = [[(format_template(t, n), t) for n in dict.fromkeys([name, official] if keep_official else [name])
                  for t in temps] for name, official in zip(chosen, dataset.classnames)]
    info = {"names_from": source, "rule": "strict" if strict else "relaxed", "num_templates": len(temps),
            "renamed": len(changed), "replacements": changed,
            "recipe": "deviates from the authors': keep_official=true" if keep_official else "authors' (METHODS §6)"}
    return PromptSet.from_lists(dataset.classnames, per_class, "prototype", "real-prompt", info), chosen, counts


@register_method("real-prompt")
class RealPrompt(Method):
    """REAL-Prompt: each class name replaced by its most frequent name in captions, then plain zero-shot."""

    parameters = {
        "metrics": Param(str, _METRICS_DOC, nullable=True),
        "corpus": Param(str, _CORPUS_DOC + " to count the names over (None: use the counts of metrics)",
                        nullable=True),
        "templates": Param("templates", _TEMPLATES_DOC),
        "strict": Param(bool, "take the most frequent name even when its words are a subset of the official "
                        "name's (the rule REAL's Stanford Cars names follow); default: the relaxed word-set rule"),
        "keep_official": Param(bool, "deviates from REAL (false, the default, is the authors' recipe): a renamed "
                               "class is prompted with its chosen AND its official name (both names' template "
                               "prompts averaged), so it keeps what the text tower knows of the official name"),
    }

    def __init__(self, metrics: str | None = None, corpus: str | None = None,
                 templates: str | Sequence[str] = "ensemble", strict: bool = False,
                 keep_official: bool = False) -> None:
        self.metrics = metrics
        self.corpus = corpus
        self.templates = templates
        self.strict = strict
        self.keep_official = keep_official

    def build(self, ctx: Any) -> PromptSet:
        return _real_prompt_set(dataset_of(ctx), self.metrics, self.corpus, self.templates, self.strict,
                                self.keep_official)[0]


@register_method("real-linear")
class RealLinear(Method):
    """REAL-Linear: a linear head trained on corpus images retrieved per class, mixed with REAL-Prompt (WiSE-FT)."""

    kind = "fitted"
    randomised = True
    #: trains on retrieved corpus images only: no split of the dataset is read while fitting
    reads_splits = False
    parameters = {
        "corpus": Param(str, _CORPUS_DOC + " (required); its img_emb/ are the image features, else the retrieved "
                        "images named by its image_path column are encoded once", nullable=True),
        "image_root": Param(str, "the folder relative image_path values are read against (default: the corpus "
                            "folder); only for a corpus without img_emb/", nullable=True),
        "metrics": Param(str, _METRICS_DOC + "; with no counts the names are counted over corpus", nullable=True),
        "templates": Param("templates", _TEMPLATES_DOC),
        "strict": Param(bool, "REAL-Prompt's name rule for the initial weights and text features"),
        "n": Param(int, "images kept per class (the paper: 500; the authors' code: 100)", low=1),
        "candidates": Param(int, "candidates per class before ranking (after the seeded shuffle; kNN: nearest "
                            "images searched); None: every string match, 2·n for kNN (the authors take 2·n)",
                            low=1, nullable=True),
        "retrieval": Param(str, "string (REAL: captions matching a name) or knn (nearest corpus images to the "
                           "class's prompt embedding, FAISS)", choices=("string", "knn")),
        "index": Param(str, "FAISS factory string of the kNN image index (Flat, HNSW32, IVF1024,PQ32, ...)"),
        "subset_names": Param(str, "names whose words are a strict subset of the official name's (a genus word, "
                              "the name trap REAL-Prompt's rule skips) match other species' captions: drop them from "
                              "retrieval, or keep them (the authors', default)", choices=("drop", "keep")),
        "balance": Param(str, "how training draws the retrieved images: none (uniformly, the authors', default) "
                         "or class (each class equally often, so that tail classes with few images are not drowned)",
                         choices=("none", "class")),
        "min_images": Param(int, "deviates from REAL (0, the default, is the authors' recipe): a class whose string "
                            "matching keeps fewer than min_images images is topped up to min_images with its "
                            "best-ranked kNN images (retrieval=knn's, same n and ranking), so rarely or never named "
                            "classes get images; needs img_emb/. Chosen on the toy world's validation split: 150 "
                            "(with subset_names=drop, alpha=0.7; docs/real.md)",
                            low=0),
        "alpha": Param(float, "WiSE-FT mixing: alpha·learned + (1 − alpha)·zero-shot", low=0.0, high=1.0),
        "steps": Param(int, "cap on training steps: min(steps, n·C·10/32)", low=1),
        "seed": Param(int, "seed of the candidate shuffle and of the training batches", low=0),
    }

    def __init__(self, corpus: str | None = None, metrics: str | None = None,
                 templates: str | Sequence[str] = "ensemble", strict: bool = False, n: int = 500,
                 candidates: int | None = None, retrieval: str = "string", index: str = "Flat",
                 subset_names: str = "keep", balance: str = "none", alpha: float = 0.5,
                 min_images: int = 0, steps: int = 32_000, seed: int = 0, image_root: str | None = None) -> None:
        self.corpus = corpus
        self.image_root = image_root
        self.metrics = metrics
        self.templates = templates
        self.strict = strict
        self.n = n
        self.candidates = candidates
        self.retrieval = retrieval
        self.index = index
        self.subset_names = subset_names
        self.balance = balance
        self.min_images = min_images
        self.alpha = alpha
        self.steps = steps
        self.seed = seed

    # -- fitting -------------------------------------------------------------------------------------------
    def fit(self, ctx: Any) -> RealLinear:
        """Retrieve per class, train the head, mix it with the zero-shot head (see the module doc)."""
        from ..corpus import Corpus
        from ..heads import ClassHead, wise_ft
        from ..real import (
            Retrieved,
            cache_key,
            corpus_image_features,
            image_paths,
            name_prompt_embeddings,
            real_cache_dir,
            retrieve_knn,
            retrieve_string,
            top_up,
            total_steps,
            train_head,
        )

        if self.corpus is None:
            raise ZsclipError("real-linear needs a caption corpus: -p corpus=DIR (`zsclip world corpus --out DIR` "
                              "exports the toy world's)")
        if self.min_images and self.retrieval != "string":
            raise ZsclipError(f"min_images tops up string-match retrieval with kNN images; with retrieval="
                              f"{self.retrieval} every class already gets n images: leave min_images at 0")
        dataset = ctx.dataset
        corpus = Corpus.open(self.corpus)
        from_files = not corpus.has_image_embeddings
        if from_files and (self.retrieval == "knn" or self.min_images):
            raise ZsclipError(f"corpus {corpus.path} has no image embeddings (img_emb/img_emb_N.npy beside metadata/): "
                              "kNN retrieval (retrieval=knn, or the top-up of min_images) searches every corpus "
                              "image, so it needs them (clip-retrieval's `inference` makes them); use "
                              "retrieval=string with min_images=0, which encodes only the retrieved images")
        if from_files:
            image_paths(corpus, np.zeros(0, np.int64), self.image_root)  # no image column: refused before retrieval
        prompt_set, chosen, counts = _real_prompt_set(dataset, self.metrics, None if self._has_counts(dataset) else
                                                      self.corpus, self.templates, self.strict)
        cache = ctx.text_cache
        temps = _templates(self.templates, dataset.card)
        text_emb = cache.encode(list(prompt_set.texts))  # C·T single-template text features, class by class
        if not from_files and text_emb.shape[1] != corpus.embedding_file(0, "image").shape[1]:
            raise ZsclipError(f"corpus {corpus.path} image embeddings have dimension "
                              f"{corpus.embedding_file(0, 'image').shape[1]} but the model's are "
                              f"{text_emb.shape[1]}: the corpus was embedded by another model")
        text_labels = np.asarray(prompt_set.owners, dtype=np.int64)
        zs = np.stack([text_emb[text_labels == c].mean(axis=0) for c in range(len(chosen))])
        zs /= np.maximum(np.linalg.norm(zs, axis=1, keepdims=True), 1e-12)
        names_per_class = [retrieval_names(c.name, list(c.alternates), self.subset_names) for c in counts]
        name_emb = [name_prompt_embeddings(cache.encode, names, temps) for names in names_per_class]

        key_payload = {"corpus": corpus.manifest()["shards"], "corpus_path": str(corpus.path.resolve()),
                       "names": names_per_class, "templates": temps, "n": self.n, "candidates": self.candidates,
                       "retrieval": self.retrieval, "min_images": self.min_images,
                       "index": self.index if self.retrieval == "knn" or self.min_images else None,
                       "seed": self.seed, "model": cache.encoder.fingerprint,
                       "image_features": "files" if from_files else "img_emb",
                       "image_root": str(Path(self.image_root).expanduser().resolve()) if self.image_root else None}
        folder = real_cache_dir() / cache_key(key_payload)
        retrieved = Retrieved.load(folder / "retrieved.parquet")
        reused = retrieved is not None
        if retrieved is None:
            knn = None
            if self.retrieval == "knn" or self.min_images:
                from ..corpus_index import CorpusIndex

                index = CorpusIndex.open(corpus, "image", self.index)
                knn = retrieve_knn(corpus, index, zs, name_emb, self.n, self.candidates or 2 * self.n, cache.encode)
            if self.retrieval == "string":
                retrieved = retrieve_string(corpus, names_per_class, name_emb, self.n, self.seed, cache.encode,
                                            self.candidates)
                if self.min_images and knn is not None:
                    floor = min(self.min_images, self.n)
                    retrieved = top_up(retrieved, knn, floor, len(chosen))
                    log.info("real-linear: classes topped up to %d images with kNN images", floor)
            else:
                assert knn is not None
                retrieved = knn
            retrieved.save(folder / "retrieved.parquet", {"params": key_payload, "classes": list(dataset.classnames)})
        per_class = retrieved.per_class(len(chosen))
        empty = [dataset.classnames[c] for c in np.flatnonzero(per_class == 0)]

        image_info: dict[str, Any] = {"images_encoded": 0, "stores": []}
        steps = total_steps(self.n, len(chosen), self.steps)
        head_key = cache_key({**key_payload, "strict": self.strict, "steps": steps, "alpha": self.alpha,
                              "balance": self.balance})
        zero_shot = ClassHead(zs, tuple(dataset.classnames), None, {"kind": "real-prompt", "names": chosen})
        head_path = folder / f"head-{head_key}"
        if head_path.with_suffix(".json").is_file():
            self.head_ = ClassHead.load(head_path)
            trained = False
        else:
            if len(retrieved.rows):
                if from_files:
                    images, image_info = corpus_image_features(corpus, retrieved.rows, cache.encoder, self.image_root)
                else:
                    images = np.asarray(corpus.embeddings(retrieved.rows, "image"), dtype=np.float32)
                learned_w = train_head(images, retrieved.labels, text_emb, text_labels, zs, steps, self.seed,
                                       balance=self.balance)
            else:
                log.warning("real-linear: no corpus image was retrieved for any class; the zero-shot head is used")
                learned_w = zs.copy()
            learned_w[per_class == 0] = zs[per_class == 0]  # a class without images keeps its zero-shot weight
            learned = ClassHead(learned_w, tuple(dataset.classnames), None,
                                {"kind": "real-linear", "steps": steps, "seed": self.seed,
                                 "images": int(len(retrieved.rows))})
            self.head_ = wise_ft(zero_shot, learned, self.alpha)
            self.head_.save(head_path)
            trained = True
        if empty:
            log.warning("real-linear: %d classes retrieved no image and keep their zero-shot weight: %s",
                        len(empty), ", ".join(empty[:5]))
        self.classnames_ = tuple(dataset.classnames)
        self.names_ = chosen
        self.retrieved_ = retrieved
        self.fit_info_ = {
            "names_from": prompt_set.info["names_from"], "renamed": prompt_set.info["renamed"],
            "replacements": prompt_set.info["replacements"], "retrieved_images": int(len(retrieved.rows)),
            "retrieved_per_class": {"min": int(per_class.min()), "median": float(np.median(per_class)),
                                    "max": int(per_class.max())},
            "classes_without_images": empty, "zero_shot_fallbacks": len(empty),
            "candidates_per_class_median": float(np.median(retrieved.candidates)) if len(retrieved.candidates) else 0,
            "recipe": self._recipe(),
            "retrieval_names_dropped": sum(len(c.alternates) - len(n) for c, n in zip(counts, names_per_class)),
            "training_steps": steps, "retrieved_set": cache_display(folder / "retrieved.parquet"),
            "retrieved_reused": reused,
            "head": cache_display(head_path.with_suffix(".json")), "head_trained": trained,
            "image_features": "encoded from image files" if from_files else "img_emb",
            "corpus_images_encoded": image_info["images_encoded"], "corpus_image_stores": image_info["stores"],
        }
        return self

    def _recipe(self) -> str:
        """Which recipe ran: the authors', or the deviations from it that the parameters ask for."""
        changes = [f"{k}={v}" for k, v, default in (("subset_names", self.subset_names, "keep"),
                                                    ("balance", self.balance, "none"),
                                                    ("min_images", self.min_images, 0),
                                                    ("alpha", self.alpha, 0.5),
                                                    ("retrieval", self.retrieval, "string")) if v != default]
        return "authors' (METHODS §6)" if not changes else "deviates from the authors': " + ", ".join(changes)

    def _has_counts(self, dataset: Any) -> bool:
        """Whether ``metrics`` (or the card's synonyms) hold counts; otherwise names are counted over the corpus."""
        if self.metrics is None:
            return bool(dataset.card.get("synonyms"))  # the card's file holds counts; none: count official names
        from .._io import read_json
        from ..paths import locate

        data = read_json(locate(Path(self.metrics).expanduser()), "REAL metrics file")
        return isinstance(data, dict) and all(
            isinstance(e, dict) and isinstance(e.get("alternates"), dict)
            and all(isinstance(v, int) for v in e["alternates"].values()) for e in data.values())

    # -- scoring -------------------------------------------------------------------------------------------
    @property
    def classnames(self) -> tuple[str, ...]:
        return self.classnames_

    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        """``N × C`` scores of the WiSE-FT head."""
        return self.head_.scores(image_embeddings)

    def predict(self, image_embeddings: np.ndarray) -> np.ndarray:
        return self.scores(image_embeddings).argmax(axis=1)

    def explain(self, image_embedding: np.ndarray, true_label: int | None = None) -> Any:
        """The predicted, true and runner-up classes with their head score and REAL-Prompt name."""
        from ..scoring import Explanation, ExplanationRow

        s = self.scores(np.asarray(image_embedding, dtype=np.float32).reshape(1, -1))[0]
        order = np.argsort(-s, kind="stable")
        pred = int(order[0])
        runner = next(int(c) for c in order[1:] if c != true_label) if len(order) > 1 else pred
        rows = [ExplanationRow("predicted", self.classnames_[pred], float(s[pred]), self.names_[pred],
                               f"head weight (WiSE-FT alpha={self.alpha:g})", float(s[pred]))]
        if true_label is not None and true_label != pred:
            rows.append(ExplanationRow("true", self.classnames_[true_label], float(s[true_label]),
                                       self.names_[true_label], "head weight", float(s[true_label])))
        rows.append(ExplanationRow("runner-up", self.classnames_[runner], float(s[runner]), self.names_[runner],
                                   "head weight", float(s[runner])))
        return Explanation(self.classnames_[pred], self.classnames_[true_label] if true_label is not None else None,
                           self.classnames_[runner], tuple(rows))
