"""The scorer (image embeddings × text embeddings → class scores), metrics, and explanations.

Scoring is one matrix product plus a per-class reduction, chunked over images so memory stays bounded:

* ``prototype``: ``V · normalize(mean_t e_t)ᵀ`` (template ensembles, CuPL);
* ``mean`` / ``sum``: linear in the text embeddings, so ``V · (mean_t e_t)ᵀ`` / ``V · (Σ_t e_t)ᵀ`` —
  exactly the mean / sum of per-text cosines, computed with one C-column product;
* ``max``: ``V · Eᵀ`` per chunk, then ``np.maximum.reduceat`` over each class's contiguous texts.

The single-vector aggregations fold into a ``ClassHead`` (``Scorer.head``), the same object trained heads
are; ``choose_on_validation`` and ``mean_std`` are the one place a weight is chosen and seeds are summarised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ZsclipError
from .heads import ClassHead
from .prompts import PromptSet


class Scorer:
    """Class scores of image embeddings for a prompt set whose texts are already embedded.

    Args:
        prompt_set: the texts per class and their aggregation.
        text_embeddings: ``len(prompt_set.texts) × D`` normalised embeddings, in the prompt set's order.
        chunk_size: images per block; the ``max`` reduction holds ``chunk_size × num_texts`` floats at once.
    """

    def __init__(self, prompt_set: PromptSet, text_embeddings: np.ndarray, chunk_size: int = 4096) -> None:
        text_embeddings = np.asarray(text_embeddings, dtype=np.float32)
        if text_embeddings.shape[0] != len(prompt_set.texts):
            raise ZsclipError(f"{text_embeddings.shape[0]} text embeddings for {len(prompt_set.texts)} texts")
        self.prompt_set = prompt_set
        self.text_embeddings = text_embeddings
        self.chunk_size = chunk_size
        offsets = prompt_set.offsets
        self._starts = offsets[:-1]
        counts = np.diff(offsets).astype(np.float32)
        agg = prompt_set.aggregation
        self.head: ClassHead | None = None
        if agg == "max":
            self.class_weights = None
        else:
            sums = np.add.reduceat(text_embeddings, self._starts, axis=0)
            if agg == "sum":
                self.class_weights = sums
            elif agg == "mean":
                self.class_weights = sums / counts[:, None]
            else:  # prototype
                norms = np.linalg.norm(sums, axis=1, keepdims=True)
                self.class_weights = sums / np.maximum(norms, 1e-12)
            self.class_weights = np.ascontiguousarray(self.class_weights, dtype=np.float32)
            self.head = ClassHead(self.class_weights, prompt_set.classnames,
                                  provenance={"method": prompt_set.method, "aggregation": agg})

    @property
    def num_classes(self) -> int:
        return len(self.prompt_set.classnames)

    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        """``N × C`` class scores (cosine units) for ``N × D`` image embeddings (any float dtype, memmaps too)."""
        n = image_embeddings.shape[0]
        if image_embeddings.ndim != 2 or image_embeddings.shape[1] != self.text_embeddings.shape[1]:
            raise ZsclipError(f"image embeddings of shape {image_embeddings.shape} do not match text embeddings "
                              f"of dimension {self.text_embeddings.shape[1]}: made by another model?")
        if self.head is not None:  # single-vector aggregations: the folded class head
            return self.head.scores(image_embeddings, self.chunk_size)
        out = np.empty((n, self.num_classes), dtype=np.float32)
        for start in range(0, n, self.chunk_size):
            block = np.asarray(image_embeddings[start : start + self.chunk_size], dtype=np.float32)
            sims = block @ self.text_embeddings.T
            out[start : start + len(block)] = np.maximum.reduceat(sims, self._starts, axis=1)
        return out

    def text_similarities(self, image_embedding: np.ndarray) -> np.ndarray:
        """Cosine of one image with every text of the prompt set (for explanations)."""
        return self.text_embeddings @ np.asarray(image_embedding, dtype=np.float32).ravel()


def choose_on_validation(grid: Sequence[float], top1_of: Callable[[float], float]) -> tuple[float, dict[str, float]]:
    """The value of ``grid`` with the best validation top-1 (ties: the smaller value), and the top-1 of each.

    The one place a weight is chosen (DDS's class-name weight, the audit's): ``top1_of(w)`` must score a
    held-out split, never the split the run reports on.
    """
    if not len(grid):
        raise ZsclipError("choosing a weight needs a non-empty grid")
    results = {f"{w:g}": float(top1_of(float(w))) for w in grid}
    best = max(grid, key=lambda w: (results[f"{w:g}"], -w))
    return float(best), results


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds, ``np.std`` with ddof = 0 (as WaffleCLIP reports it)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=0))


#: how ``mean_std`` computes the spread, for run records
STD_CONVENTION = "np.std over seeds, ddof=0"


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best classes per row, best first (``N × k``)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def evaluate(scores: np.ndarray, labels: np.ndarray, classnames: Sequence[str]) -> dict[str, Any]:
    """Top-1, top-5 (with ≥ 5 classes), mean per-class recall and per-class accuracy, in percent.

    Mean per-class recall averages over the classes that have at least one image.
    """
    labels = np.asarray(labels)
    if len(labels) != scores.shape[0]:
        raise ZsclipError(f"{scores.shape[0]} score rows for {len(labels)} labels")
    c = len(classnames)
    top = topk_indices(scores, min(5, c))
    correct1 = top[:, 0] == labels
    metrics: dict[str, Any] = {"num_images": int(len(labels)), "num_classes": c,
                               "top1": float(100 * correct1.mean()) if len(labels) else float("nan")}
    if c >= 5:
        metrics["top5"] = float(100 * (top[:, :5] == labels[:, None]).any(axis=1).mean())
    per_class_n = np.bincount(labels, minlength=c)
    per_class_hit = np.bincount(labels, weights=correct1.astype(np.float64), minlength=c)
    present = per_class_n > 0
    recall = np.divide(per_class_hit, per_class_n, out=np.zeros(c), where=present)
    metrics["mean_per_class_recall"] = float(100 * recall[present].mean()) if present.any() else float("nan")
    metrics["per_class_accuracy"] = {name: float(100 * recall[i]) for i, name in enumerate(classnames) if present[i]}
    return metrics


@dataclass(frozen=True)
class ExplanationRow:
    """One text's contribution to one class's score for one image."""

    role: str  # predicted, true, runner-up (DDS: also candidate)
    classname: str
    class_score: float
    label: str  # the descriptor (or template) as written
    text: str  # the text that was encoded
    similarity: float


@dataclass(frozen=True)
class Explanation:
    """Why an image got its prediction: the predicted, true and runner-up classes with each text's cosine."""

    predicted: str
    true: str | None
    runner_up: str
    rows: tuple[ExplanationRow, ...]

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as dicts (``pandas.DataFrame(expl.to_records())`` in a notebook)."""
        return [row.__dict__.copy() for row in self.rows]

    def summary(self, top: int = 3) -> str:
        """"I saw a Cardinal because I saw: red crest (0.31), ..."."""
        best = [r for r in self.rows if r.role == "predicted"][:top]
        because = ", ".join(f"{r.label} ({r.similarity:.3f})" for r in best)
        return f"I saw a {self.predicted} because I saw: {because}"

    def to_text(self) -> str:
        lines = [self.summary()]
        if self.true is not None:
            lines.append(f"true class: {self.true}" + (" (correct)" if self.true == self.predicted else ""))
        groups = list(dict.fromkeys((r.role, r.classname) for r in self.rows))
        for role, name in groups:
            rows = [r for r in self.rows if (r.role, r.classname) == (role, name)]
            lines.append(f"{role}: {name} (score {rows[0].class_score:.4f})")
            lines += [f"  {r.similarity:+.4f}  {r.label}" for r in rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        cells = "".join(
            f"<tr><td>{html.escape(r.role)}</td><td>{html.escape(r.classname)}</td><td>{r.similarity:.4f}</td>"
            f"<td>{html.escape(r.label)}</td></tr>" for r in self.rows)
        return (f"<p>{html.escape(self.summary())}</p><table><tr><th>role</th><th>class</th><th>similarity</th>"
                f"<th>descriptor</th></tr>{cells}</table>")


def explain(scorer: Scorer, image_embedding: np.ndarray, true_label: int | None = None) -> Explanation:
    """Explain one image's prediction: each text of the predicted, true and runner-up classes, by similarity.

    The runner-up is the best-scored class that is neither the prediction nor the true class.
    """
    ps = scorer.prompt_set
    scores = scorer.scores(np.asarray(image_embedding, dtype=np.float32).reshape(1, -1))[0]
    order = np.argsort(-scores, kind="stable")
    pred = int(order[0])
    taken = {pred} if true_label is None else {pred, int(true_label)}
    runner = next((int(c) for c in order if int(c) not in taken), pred)
    sims = scorer.text_similarities(image_embedding)
    offsets = ps.offsets
    rows: list[ExplanationRow] = []
    roles = [("predicted", pred)]
    if true_label is not None and true_label != pred:
        roles.append(("true", int(true_label)))
    if runner != pred:
        roles.append(("runner-up", runner))
    for role, c in roles:
        idx = np.arange(offsets[c], offsets[c + 1])
        for i in idx[np.argsort(-sims[idx], kind="stable")]:
            rows.append(ExplanationRow(role, ps.classnames[c], float(scores[c]), ps.labels[i], ps.texts[i],
                                       float(sims[i])))
    return Explanation(ps.classnames[pred], ps.classnames[true_label] if true_label is not None else None,
                       ps.classnames[runner], tuple(rows))
