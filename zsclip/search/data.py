"""The only place a prompt search touches images: k-shot fitting features and validation features.

Fitness is measured on ``shots`` training images per class, drawn with a seed as CoOp draws its few-shot
sets; choices among finalists are made on the validation split (or, for a dataset without one, on the
training images the shots did not take). The test split is never read here: a search reports test once,
after it has ended, through ``eval_data`` (see ``zsclip.search.runner``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ZsclipError

logger = logging.getLogger(__name__)

FIT_SPLIT = "train"
CHOOSE_SPLIT = "val"


@dataclass
class SearchData:
    """Fitting features and labels (k shots per class), choosing (validation) ones, and where they came from."""

    fit_features: np.ndarray
    fit_labels: np.ndarray
    choose_features: np.ndarray
    choose_labels: np.ndarray
    provenance: dict[str, Any]


def _store(dataset: Any, split: str, encoder: Any) -> tuple[np.ndarray, np.ndarray]:
    from ..stores import ImageStore

    store = ImageStore.build(dataset, split, encoder)
    return np.asarray(store.embeddings, dtype=np.float32), np.asarray(store.labels, dtype=np.int64)


def kshot_indices(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """``shots`` indices per class (sorted), drawn without replacement with ``seed``; a class with fewer
    images gives all it has, a class with none is an error."""
    if shots < 1:
        raise ZsclipError(f"--shots must be at least 1, got {shots}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) == 0:
            raise ZsclipError(f"class {c} has no image in the training split: a search needs at least one per class")
        chosen.append(np.sort(rng.choice(pool, size=min(shots, len(pool)), replace=False)))
    return np.concatenate(chosen)


def search_data(dataset: Any, encoder: Any, shots: int = 1, seed: int = 1) -> SearchData:
    """``shots`` training images per class to fit on, and the validation images to choose on.

    Builds (or opens) the image stores of the training and validation splits only. A dataset without a
    ``val`` split chooses on the training images the shots left out.
    """
    if FIT_SPLIT not in dataset.splits:
        raise ZsclipError(f"dataset {dataset.name!r} has no {FIT_SPLIT!r} split to draw the k-shot fitting "
                          f"images from (its splits: {', '.join(dataset.splits)})")
    num_classes = len(dataset.classnames)
    train_x, train_y = _store(dataset, FIT_SPLIT, encoder)
    fit = kshot_indices(train_y, num_classes, shots, seed)
    prov: dict[str, Any] = {"fit": {"split": FIT_SPLIT, "shots": shots, "seed": seed, "images": int(len(fit)),
                                    "split_fingerprint": dataset.split_fingerprint(FIT_SPLIT)}}
    if CHOOSE_SPLIT in dataset.splits:
        choose_x, choose_y = _store(dataset, CHOOSE_SPLIT, encoder)
        prov["choose"] = {"split": CHOOSE_SPLIT, "images": int(len(choose_y)),
                          "split_fingerprint": dataset.split_fingerprint(CHOOSE_SPLIT)}
    else:
        rest = np.setdiff1d(np.arange(len(train_y)), fit)
        if len(rest) == 0:
            raise ZsclipError(f"dataset {dataset.name!r} has no validation split and every training image is a "
                              "fitting shot: nothing is left to choose on; use fewer --shots")
        choose_x, choose_y = train_x[rest], train_y[rest]
        prov["choose"] = {"split": f"{FIT_SPLIT} minus the shots", "images": int(len(rest))}
        logger.info("no %r split: choosing on the %d training images the shots left out", CHOOSE_SPLIT, len(rest))
    return SearchData(train_x[fit], train_y[fit], choose_x, choose_y, prov)


def eval_data(dataset: Any, encoder: Any) -> tuple[np.ndarray, np.ndarray]:
    """The test split's features and labels: for the one report after a search has ended, never during it."""
    return _store(dataset, dataset.default_split, encoder)
