"""The run context: everything a method may use, with image stores handed out by ROLE.

A method never names a split. It asks the context for the images of a role:

* ``fit``: training / selection images (optionally ``shots`` per class, drawn with a seed, CoOp style);
* ``choose``: validation images, for choices a method makes (a weight, a finalist);
* ``eval``: the images the run reports on.

The context starts in the *fitting* phase: asking for ``eval`` then raises ``SplitRoleError``, whoever
asks — so "never fit or choose on test" is a rule of the code, not a habit of each method. The pipeline
switches to the evaluation phase (``ctx.evaluating()``) only after the method is fitted. A role whose split
is the evaluation split (``classify --split val`` with ``choose`` = ``val``) is refused for the same reason.

Each dataset declares which split plays which role (``Dataset.split_roles``). A store is built once per
(split, model) and shared by every method and seed of the run; ``encoded`` counts the images this run
encoded per split.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ZsclipError

if TYPE_CHECKING:
    from .datasets import Dataset
    from .llm import LLMClient
    from .models import Encoder
    from .stores import ImageStore, TextEmbeddingCache

log = logging.getLogger(__name__)

ROLES = ("fit", "choose", "eval")


class SplitRoleError(ZsclipError):
    """A method asked for images it may not see (the evaluation split while fitting or choosing)."""


@dataclass(frozen=True)
class Features:
    """Image embeddings of one role: ``embeddings`` (N × D, float32), ``labels`` (N), their ``split`` and the
    store ``rows`` they came from."""

    embeddings: np.ndarray
    labels: np.ndarray
    split: str
    rows: np.ndarray


def few_shot_rows(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Rows of ``shots`` images per class drawn without replacement with ``seed`` (all of a class's images
    when it has fewer), classes in label order, in ascending row order — CoOp's few-shot sampling."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picked.append(rng.choice(rows, size=min(shots, len(rows)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


class RunContext:
    """What a method may use: the dataset, the encoder, the text cache, an LLM client, image stores by role.

    Args:
        dataset: the dataset of the run.
        encoder: the model (``None`` for prompt methods built without encoding, e.g. in a notebook).
        text_cache: the text-embedding cache (default: the encoder's).
        llm: an ``LLMClient`` when one is configured.
        eval_split: the split the run reports on (default: the dataset's ``eval`` role).
        store_options: keyword arguments for ``ImageStore.build`` (dtype, index, batch size, workers).
        eval_store_path: a store folder for the evaluation split (``--store``).
        shots, shot_seed: when ``shots`` is set, ``features("fit")`` keeps that many images per class.
    """

    def __init__(self, dataset: Dataset, encoder: Encoder | None = None, *,
                 text_cache: TextEmbeddingCache | None = None, llm: LLMClient | None = None,
                 eval_split: str | None = None, store_options: Mapping[str, Any] | None = None,
                 eval_store_path: str | Path | None = None, shots: int | None = None, shot_seed: int = 0) -> None:
        self.dataset = dataset
        self.encoder = encoder
        self._text_cache = text_cache
        self.llm = llm
        self.roles = dataset.role_splits()
        if eval_split is not None:
            self.roles["eval"] = eval_split
        self.store_options = dict(store_options or {})
        self.eval_store_path = eval_store_path
        if shots is not None and shots < 1:
            raise ZsclipError(f"shots must be ≥ 1, got {shots}")
        self.shots = shots
        self.shot_seed = shot_seed
        self._stores: dict[str, ImageStore] = {}
        self._phase = "fit"
        #: images this run encoded, per split
        self.encoded: dict[str, int] = {}
        #: images this run skipped as unreadable, per split
        self.skipped: dict[str, int] = {}

    # -- phases --------------------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        """``fit`` (the evaluation split is off limits) or ``eval``."""
        return self._phase

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[RunContext]:
        """The evaluation phase: the ``eval`` role may be read (the pipeline enters it after fitting)."""
        before, self._phase = self._phase, "eval"
        try:
            yield self
        finally:
            self._phase = before

    # -- what a method asks for ----------------------------------------------------------------------------
    @property
    def text_cache(self) -> TextEmbeddingCache:
        if self._text_cache is None:
            from .stores import TextEmbeddingCache

            self._text_cache = TextEmbeddingCache(self._need_encoder("text embeddings"))
        return self._text_cache

    def split_of(self, role: str) -> str:
        """The split that plays ``role``, after checking the method may see it now."""
        if role not in ROLES:
            raise ZsclipError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        split = self.roles.get(role)
        if split is None:
            raise ZsclipError(f"dataset {self.dataset.name!r} has no split for the {role!r} role; its splits are "
                              f"{', '.join(self.dataset.splits)}")
        if role == "eval" and self._phase != "eval":
            raise SplitRoleError(f"the evaluation split ({split!r}) cannot be read while fitting or choosing: "
                                 "methods and searches use the 'fit' and 'choose' roles only")
        if role != "eval" and split == self.roles.get("eval"):
            raise SplitRoleError(f"the {role!r} role's split {split!r} is the split this run evaluates on; "
                                 "evaluate on another split, or fit/choose on another one")
        return split

    def store(self, role: str) -> ImageStore:
        """The image store of ``role``'s split (built on first use, shared for the rest of the run)."""
        split = self.split_of(role)
        if split not in self._stores:
            from .stores import ImageStore

            path = self.eval_store_path if role == "eval" else None
            store = ImageStore.build(self.dataset, split, self._need_encoder("image embeddings"), path,
                                     **self.store_options)
            self._stores[split] = store
            self.encoded[split] = self.encoded.get(split, 0) + store.build_stats.images_encoded
            self.skipped[split] = store.build_stats.images_skipped
        return self._stores[split]

    def features(self, role: str, shots: int | None = None, seed: int | None = None) -> Features:
        """Embeddings and labels of ``role`` (``fit``: ``shots`` per class when the context or call says so)."""
        store = self.store(role)
        labels = np.asarray(store.labels)
        shots = shots if shots is not None else (self.shots if role == "fit" else None)
        rows = (few_shot_rows(labels, shots, self.shot_seed if seed is None else seed) if shots
                else np.arange(len(labels)))
        emb = np.asarray(store.embeddings[rows] if shots else store.embeddings, dtype=np.float32)
        return Features(emb, labels[rows], store.manifest.get("split", self.roles[role]), rows)

    def _need_encoder(self, what: str) -> Encoder:
        if self.encoder is None:
            raise ZsclipError(f"this run context has no encoder, so it cannot make {what}; pass encoder=...")
        return self.encoder

    def describe(self) -> dict[str, Any]:
        """The roles and few-shot settings, for the run record."""
        return {"roles": dict(self.roles), "shots": self.shots, "shot_seed": self.shot_seed if self.shots else None}
