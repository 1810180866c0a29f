"""The fast fitness evaluator of prompt searches: cached text blocks, one product per candidate.

Fitness (ProAPO, METHODS.md §5) of a prompt set on the k-shot fitting images, from the cosines ``S`` (N × C)
between image features and the set's class weights ``T`` (C × D, unit rows):

    F = w1·top1 + w5·top5 + β·R − γ·CE,   R = ‖triu(T·Tᵀ − I)‖_F,   CE = mean −log softmax(scale·S)[y]

with top-k in percent (top-5 is top-C when there are fewer than 5 classes). ProAPO's argparse defaults are
w1 = w5 = 0.1, β = 0.05, γ = 10; the black-box mode is F = top1. The logit scale is the encoder's (100 when it
has none). R is only computed when β ≠ 0 (it is NaN in the log otherwise): it is the costliest term.

Stage 1 (``TemplateSetEvaluator``): each template's class embeddings ``B_t`` (C × D, one unit text per class)
and their cosines with the features ``L_t = X·B_tᵀ`` (N × C) are computed once. A set's class weight is the
renormalised mean of its blocks, so its cosines are ``Σ_t L_t / ‖Σ_t B_t‖`` (per class): sums of cached
arrays, no text encoded and no product with the features per evaluation. The sum, the ranks and the
log-sum-exp run in one fused pass per image row (``_kernels``, numba), not as a chain of N × C array ops.
Sums run in a fixed order (the templates' insertion order), so a set's fitness does not depend on which sets were
evaluated before it — which a resumed job relies on to end as an uninterrupted one does.

Stage 2 (``ClassPromptEvaluator``): per class a list of items, each the sum of its texts' unit embeddings; a
class's weight is the renormalised sum of its items. An edit of a few classes recomputes only those classes'
cosines (and R's terms that involve them) against a committed base.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from numba import types
from numba.typed import List

from ..errors import ZsclipError
from ..prompts import format_template
from ._kernels import edit_terms, set_terms

#: logit scale when the encoder gives none (trained CLIP's ≈ 100)
DEFAULT_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class FitnessWeights:
    """``F = top1·top1 + top5·top5 + r·R − ce·CE`` (ProAPO's w1, w5, β, γ)."""

    top1: float = 0.1
    top5: float = 0.1
    r: float = 0.05
    ce: float = 10.0

    @classmethod
    def parse(cls, spec: str) -> FitnessWeights:
        """``proapo`` (argparse defaults), ``blackbox`` (F = top1) or ``top1=..,top5=..,r=..,ce=..`` (missing
        names are 0)."""
        spec = spec.strip()
        if spec in ("proapo", "default"):
            return cls()
        if spec in ("blackbox", "black-box", "top1"):
            return cls(1.0, 0.0, 0.0, 0.0)
        values: dict[str, float] = {}
        aliases = {"w1": "top1", "w5": "top5", "beta": "r", "gamma": "ce"}
        for part in spec.split(","):
            name, sep, value = part.partition("=")
            name = aliases.get(name.strip(), name.strip())
            if not sep or name not in ("top1", "top5", "r", "ce"):
                raise ZsclipError(f"--fitness {spec!r}: expected proapo, blackbox or top1=W,top5=W,r=W,ce=W "
                                  "(also w1, w5, beta, gamma)")
            try:
                values[name] = float(value)
            except ValueError:
                raise ZsclipError(f"--fitness {spec!r}: {value!r} is not a number") from None
        return cls(**{n: values.get(n, 0.0) for n in ("top1", "top5", "r", "ce")})

    def combine(self, top1: float, top5: float, r: float, ce: float) -> float:
        """The fitness of these terms (R does not count when its weight is 0)."""
        return self.top1 * top1 + self.top5 * top5 + (self.r * r if self.r else 0.0) - self.ce * ce

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Terms:
    """One evaluation: top-1 and top-5 (percent), cross-entropy, R (NaN when not computed) and the fitness."""

    top1: float
    top5: float
    ce: float
    r: float
    fitness: float

    def row(self) -> dict[str, float]:
        return asdict(self)


def redundancy(t: torch.Tensor) -> float:
    """``‖triu(T·Tᵀ − I)‖_F`` of unit rows ``t`` (C × D), via the smaller of T·Tᵀ and Tᵀ·T.

    The product is single precision (the costliest step of an evaluation with R); squares are summed in double.
    """
    t = t.float()
    c, d = t.shape
    fro2 = float((t @ t.T if c <= d else t.T @ t).double().square().sum())
    diag2 = float(t.double().square().sum(1).square().sum())
    return math.sqrt(max(fro2 - diag2, 0.0) / 2.0)


def _pair_contribution(t_all: torch.Tensor, group: torch.Tensor, t_group: torch.Tensor) -> float:
    """Σ over class pairs i < j with i or j in ``group`` of (t_i·t_j)², the rows of ``group`` being ``t_group``
    and the others those of ``t_all`` (the part of R² a group edit changes)."""
    m = t_group @ t_all.T
    m[:, group] = t_group @ t_group.T
    m = m.double()
    total = float(m.square().sum())
    within = m[:, group]
    inside = float(within.square().sum())
    diag = float(torch.diagonal(within).square().sum())
    return (total - inside) + (inside - diag) / 2.0


class _Scorer:
    """Features, labels, weights and scale shared by both evaluators; turns per-row ranks into ``Terms``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int, weights: FitnessWeights,
                 logit_scale: float | None) -> None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) == 0:
            raise ZsclipError("a search needs at least one fitting image (got no image features)")
        self.x = torch.from_numpy(np.ascontiguousarray(features))
        self.y = np.ascontiguousarray(labels, dtype=np.int64)
        self.num_classes = num_classes
        self.weights = weights
        self.scale = float(logit_scale) if logit_scale else DEFAULT_LOGIT_SCALE
        self.k5 = min(5, num_classes)
        self.evaluations = 0
        n = len(self.y)
        self._rank = np.empty(n, dtype=np.int64)
        self._lse = np.empty(n, dtype=np.float64)
        self._true = np.empty(n, dtype=np.float64)

    def terms(self, r: float) -> Terms:
        """Terms from the per-row ranks, log-sum-exps and true scaled cosines a kernel just wrote."""
        self.evaluations += 1
        n = len(self._rank)
        top1 = float(np.count_nonzero(self._rank == 0)) * 100.0 / n
        top5 = float(np.count_nonzero(self._rank < self.k5)) * 100.0 / n
        ce = float((self._lse - self._true).mean())
        return Terms(top1, top5, ce, r, self.weights.combine(top1, top5, r, ce))


class TemplateSetEvaluator(_Scorer):
    """Stage 1 and hill-climbing: candidates are sets of templates (see the module docstring)."""

    #: templates per cached cosine array (the arrays are allocated a chunk at a time, never copied)
    CHUNK = 32

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int,
                 weights: FitnessWeights = FitnessWeights(), logit_scale: float | None = None) -> None:
        super().__init__(features, labels, num_classes, weights, logit_scale)
        self._index: dict[str, int] = {}
        self._blocks: list[torch.Tensor] = []
        self._chunks = List.empty_list(types.float32[:, :, ::1])
        self._v = torch.empty(num_classes, self.x.shape[1])

    def __contains__(self, template: str) -> bool:
        return template in self._index

    def add(self, template: str, block: np.ndarray) -> None:
        """Keep ``block`` (C × D unit rows: the template filled with each class name) and its cosines."""
        if template in self._index:
            return
        b = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
        if b.shape != (self.num_classes, self.x.shape[1]):
            raise ZsclipError(f"template {template!r}: block of shape {tuple(b.shape)}, expected "
                              f"({self.num_classes}, {self.x.shape[1]})")
        i = len(self._blocks)
        if i % self.CHUNK == 0:
            self._chunks.append(np.empty((self.CHUNK, len(self.y), self.num_classes), dtype=np.float32))
        self._index[template] = i
        self._blocks.append(b)
        self._chunks[i // self.CHUNK][i % self.CHUNK] = (self.x @ b.T).numpy()

    def _ids(self, templates: Iterable[str]) -> list[int]:
        ids = sorted({self._index[t] for t in templates})
        if not ids:
            raise ZsclipError("cannot evaluate an empty template set")
        return ids

    def _block_sum(self, ids: Sequence[int]) -> torch.Tensor:
        v = self._v.copy_(self._blocks[ids[0]])
        for i in ids[1:]:
            v += self._blocks[i]
        return v

    def class_weights(self, templates: Iterable[str]) -> torch.Tensor:
        """The set's class weights: the renormalised mean of its blocks (C × D)."""
        v = self._block_sum(self._ids(templates))
        return v / v.norm(dim=1, keepdim=True)  # a new tensor: the sum lives in a reused buffer

    def evaluate(self, templates: Iterable[str]) -> Terms:
        """The fitness terms of a template set (its order and repeats do not matter)."""
        ids = self._ids(templates)
        v = self._block_sum(ids)
        norms = v.norm(dim=1)
        r = redundancy(v.div_(norms[:, None])) if self.weights.r else float("nan")
        ids_arr = np.asarray(ids, dtype=np.int64)
        set_terms(self._chunks, ids_arr // self.CHUNK, ids_arr % self.CHUNK, (self.scale / norms).numpy(),
                  self.y, self._rank, self._lse, self._true)
        return self.terms(r)


class ClassPromptEvaluator(_Scorer):
    """Stage 2: per class a set of items (rows of ``items[c]``, each the sum of its texts' unit embeddings).

    ``set_base`` evaluates a full assignment and keeps its cosines; ``evaluate`` an edit of a few classes
    (``{class: item ids}``) against it, recomputing only those classes' cosines; ``commit`` makes an edit
    the new base.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, items: Sequence[np.ndarray],
                 weights: FitnessWeights = FitnessWeights(), logit_scale: float | None = None) -> None:
        super().__init__(features, labels, len(items), weights, logit_scale)
        self.items = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in items]
        self.base: list[tuple[int, ...]] = []
        self._t = torch.zeros(0)
        self._s = np.zeros((0, 0), dtype=np.float32)
        self._q = 0.0
        self._no_group = np.zeros(0, dtype=np.int64)
        self._no_columns = np.zeros((len(self.y), 0), dtype=np.float32)

    def _class_weight(self, c: int, ids: Sequence[int]) -> torch.Tensor:
        ids = sorted(set(ids))
        if not ids:
            raise ZsclipError(f"class {c} would have no prompt")
        v = self.items[c][ids].double().sum(0)
        return (v / v.norm()).float()

    def _base_terms(self) -> Terms:
        edit_terms(self._s, self._no_group, self._no_columns, self.y, self._rank, self._lse, self._true)
        return self.terms(math.sqrt(self._q) if self.weights.r else float("nan"))

    def set_base(self, assignment: Sequence[Sequence[int]]) -> Terms:
        """Make ``assignment`` (item ids per class) the base and return its terms."""
        self.base = [tuple(sorted(set(a))) for a in assignment]
        self._t = torch.stack([self._class_weight(c, a) for c, a in enumerate(self.base)])
        self._s = (self.x @ self._t.T).mul_(self.scale).numpy()
        if self.weights.r:
            r = redundancy(self._t)
            self._q = r * r
        return self._base_terms()

    def _edited(self, edits: Mapping[int, Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, float]:
        group = torch.tensor(sorted(edits), dtype=torch.long)
        t_group = torch.stack([self._class_weight(c, edits[c]) for c in sorted(edits)])
        columns = np.ascontiguousarray((self.x @ t_group.T).mul_(self.scale).numpy())
        r = float("nan")
        if self.weights.r:
            q = (self._q - _pair_contribution(self._t, group, self._t[group])
                 + _pair_contribution(self._t, group, t_group))
            r = math.sqrt(max(q, 0.0))
        return group, t_group, columns, r

    def evaluate(self, edits: Mapping[int, Sequence[int]]) -> Terms:
        """Terms of the base with the classes in ``edits`` given those item ids."""
        if not edits:
            return self._base_terms()
        group, _, columns, r = self._edited(edits)
        edit_terms(self._s, group.numpy(), columns, self.y, self._rank, self._lse, self._true)
        return self.terms(r)

    def commit(self, edits: Mapping[int, Sequence[int]]) -> None:
        """Apply ``edits`` to the base (the same arithmetic as ``evaluate``, so replays are exact)."""
        if not edits:
            return
        group, t_group, columns, r = self._edited(edits)
        self._t[group] = t_group
        self._s[:, group.numpy()] = columns
        if self.weights.r:
            self._q = r * r
        for c in edits:
            self.base[c] = tuple(sorted(set(edits[c])))

    def base_scores(self) -> np.ndarray:
        """The base's scaled cosines (N × C), a copy."""
        return self._s.copy()

    def class_weights(self) -> torch.Tensor:
        """The base's class weights (C × D)."""
        return self._t.clone()


# -- text blocks through the text cache ------------------------------------------------------------------


def template_blocks(templates: Sequence[str], classnames: Sequence[str], cache) -> dict[str, np.ndarray]:
    """``{template: C × D}`` unit text embeddings of every template filled with every class name, through
    ``cache`` (a ``TextEmbeddingCache``: texts already encoded are read, not encoded)."""
    templates = list(dict.fromkeys(templates))
    texts = [format_template(t, c) for t in templates for c in classnames]
    emb = cache.encode(texts)
    c = len(classnames)
    return {t: emb[i * c:(i + 1) * c] for i, t in enumerate(templates)}
