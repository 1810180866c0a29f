"""The only place a prompt search touches images: k-shot fitting features and validation features.

Fitness is measured on ``shots`` images per class of the run context's ``fit`` role, drawn with a seed as
CoOp draws its few-shot sets; choices among finalists are made on the ``choose`` role (validation), or,
for a dataset without one, on the training images the shots did not take. The evaluation split is never
read here (the run context refuses it): a search reports it once, after it has ended, through
``eval_data`` (see ``zsclip.search.runner``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..context import RunContext, SplitRoleError, few_shot_rows
from ..errors import ZsclipError

logger = logging.getLogger(__name__)

@dataclass
class SearchData:
    """Fitting features and labels (k shots per class), choosing (validation) ones, and where they came from."""

    fit_features: np.ndarray
    fit_labels: np.ndarray
    choose_features: np.ndarray
    choose_labels: np.ndarray
    provenance: dict[str, Any]


def kshot_indices(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """``shots`` indices per class (``zsclip.context.few_shot_rows``); a class with no image is an error."""
    if shots < 1:
        raise ZsclipError(f"--shots must be at least 1, got {shots}")
    missing = np.setdiff1d(np.arange(num_classes), labels)
    if len(missing):
        raise ZsclipError(f"class {int(missing[0])} has no image in the training split: a search needs at least one "
                          "per class")
    return few_shot_rows(labels, shots, seed)


def search_data(dataset: Any, encoder: Any, shots: int = 1, seed: int = 1) -> SearchData:
    """``shots`` training images per class to fit on, and the validation images to choose on.

    Reads the run context's ``fit`` and ``choose`` roles only (the context refuses ``eval`` while a search
    runs). A dataset without a validation split chooses on the training images the shots left out.
    """
    ctx = RunContext(dataset, encoder)
    try:
        fit_store = ctx.store("fit")
    except SplitRoleError:
        raise
    except ZsclipError as exc:
        raise ZsclipError(f"dataset {dataset.name!r} has no training split to draw the k-shot fitting images from "
                          f"({exc})") from None
    train_x = np.asarray(fit_store.embeddings, dtype=np.float32)
    train_y = np.asarray(fit_store.labels, dtype=np.int64)
    fit = kshot_indices(train_y, len(dataset.classnames), shots, seed)
    fit_split = ctx.roles["fit"]
    prov: dict[str, Any] = {"fit": {"split": fit_split, "shots": shots, "seed": seed, "images": int(len(fit)),
                                    "split_fingerprint": dataset.split_fingerprint(fit_split)}}
    if "choose" in ctx.roles:
        choose = ctx.features("choose")
        choose_x, choose_y = choose.embeddings, choose.labels.astype(np.int64)
        prov["choose"] = {"split": choose.split, "images": int(len(choose_y)),
                          "split_fingerprint": dataset.split_fingerprint(choose.split)}
    else:
        rest = np.setdiff1d(np.arange(len(train_y)), fit)
        if len(rest) == 0:
            raise ZsclipError(f"dataset {dataset.name!r} has no validation split and every training image is a "
                              "fitting shot: nothing is left to choose on; use fewer --shots")
        choose_x, choose_y = train_x[rest], train_y[rest]
        prov["choose"] = {"split": f"{fit_split} minus the shots", "images": int(len(rest))}
        logger.info("no validation split: choosing on the %d training images the shots left out", len(rest))
    return SearchData(train_x[fit], train_y[fit], choose_x, choose_y, prov)


def eval_data(dataset: Any, encoder: Any) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation split's features and labels: for the one report after a search has ended, never during it."""
    ctx = RunContext(dataset, encoder)
    with ctx.evaluating():
        held = ctx.features("eval")
    return held.embeddings, held.labels.astype(np.int64)
