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
arrays, no text encoded and no product with the features per evaluation. Sums run in a fixed order (the
templates' insertion order), so a set's fitness does not depend on which sets were evaluated before it —
which a resumed job relies on to end as an uninterrupted one does.

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

from ..errors import ZsclipError
from ..prompts import format_template

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
    """``‖triu(T·Tᵀ − I)‖_F`` of unit rows ``t`` (C × D), via the smaller of T·Tᵀ and Tᵀ·T."""
    t = t.double()
    c, d = t.shape
    fro2 = float((t @ t.T).square().sum()) if c <= d else float((t.T @ t).square().sum())
    diag2 = float(t.square().sum(1).square().sum())
    return math.sqrt(max(fro2 - diag2, 0.0) / 2.0)


def _pair_contribution(t_all: torch.Tensor, group: torch.Tensor) -> float:
    """Σ over class pairs i < j with i or j in ``group`` of (t_i·t_j)² (the part of R² a group edit changes)."""
    m = t_all[group].double() @ t_all.double().T
    total = float(m.square().sum())
    within = m[:, group]
    inside = float(within.square().sum())
    diag = float(torch.diagonal(within).square().sum())
    return (total - inside) + (inside - diag) / 2.0


class _Scorer:
    """Features, labels, weights and scale shared by both evaluators; turns cosines into ``Terms``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int, weights: FitnessWeights,
                 logit_scale: float | None) -> None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) == 0:
            raise ZsclipError("a search needs at least one fitting image (got no image features)")
        self.x = torch.from_numpy(np.ascontiguousarray(features))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.num_classes = num_classes
        self.weights = weights
        self.scale = float(logit_scale) if logit_scale else DEFAULT_LOGIT_SCALE
        self.k5 = min(5, num_classes)
        self.evaluations = 0
        self._gt = torch.empty(0, dtype=torch.bool)

    def terms(self, z: torch.Tensor, r: float) -> Terms:
        """Terms of the scaled cosines ``z = scale·S`` (N × C float32, overwritten) with R already known.

        Works in place and in reused buffers: fresh megabyte-sized arrays per evaluation cost more in page
        faults than the arithmetic. Exponents are clamped at −80 below each row's peak (e^−80 is far below
        float32's resolution of the sum, and it keeps the exponentials out of slow denormal numbers).
        """
        self.evaluations += 1
        if self._gt.shape != z.shape:
            self._gt = torch.empty(z.shape, dtype=torch.bool)
        true = z.gather(1, self.y[:, None])[:, 0]
        rank = torch.gt(z, true[:, None], out=self._gt).view(torch.uint8).sum(1, dtype=torch.int32)
        n = len(rank)
        top1 = float((rank == 0).sum()) * 100.0 / n
        top5 = float((rank < self.k5).sum()) * 100.0 / n
        peak = z.amax(1)
        lse = z.sub_(peak[:, None]).clamp_(min=-80.0).exp_().sum(1).log_().add_(peak)
        ce = float((lse - true).double().mean())
        return Terms(top1, top5, ce, r, self.weights.combine(top1, top5, r, ce))


class TemplateSetEvaluator(_Scorer):
    """Stage 1 and hill-climbing: candidates are sets of templates (see the module docstring)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int,
                 weights: FitnessWeights = FitnessWeights(), logit_scale: float | None = None) -> None:
        super().__init__(features, labels, num_classes, weights, logit_scale)
        self._index: dict[str, int] = {}
        self._blocks: list[torch.Tensor] = []
        self._logits: list[torch.Tensor] = []
        n, d = self.x.shape
        self._u = torch.empty(n, num_classes)
        self._v = torch.empty(num_classes, d)

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
        self._index[template] = len(self._blocks)
        self._blocks.append(b)
        self._logits.append(self.x @ b.T)

    def _sums(self, templates: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = sorted({self._index[t] for t in templates})
        if not ids:
            raise ZsclipError("cannot evaluate an empty template set")
        u = self._u.copy_(self._logits[ids[0]])
        v = self._v.copy_(self._blocks[ids[0]])
        for i in ids[1:]:
            u += self._logits[i]
            v += self._blocks[i]
        return u, v

    def class_weights(self, templates: Iterable[str]) -> torch.Tensor:
        """The set's class weights: the renormalised mean of its blocks (C × D)."""
        _, v = self._sums(templates)
        return v / v.norm(dim=1, keepdim=True)  # a new tensor: the sums live in reused buffers

    def evaluate(self, templates: Iterable[str]) -> Terms:
        """The fitness terms of a template set (its order and repeats do not matter)."""
        u, v = self._sums(templates)
        norms = v.norm(dim=1)
        r = redundancy(v.div_(norms[:, None])) if self.weights.r else float("nan")
        return self.terms(u.mul_(self.scale / norms), r)


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
        self._s = torch.zeros(0)
        self._work = torch.zeros(0)
        self._q = 0.0

    def _class_weight(self, c: int, ids: Sequence[int]) -> torch.Tensor:
        ids = sorted(set(ids))
        if not ids:
            raise ZsclipError(f"class {c} would have no prompt")
        v = self.items[c][ids].double().sum(0)
        return (v / v.norm()).float()

    def set_base(self, assignment: Sequence[Sequence[int]]) -> Terms:
        """Make ``assignment`` (item ids per class) the base and return its terms."""
        self.base = [tuple(sorted(set(a))) for a in assignment]
        self._t = torch.stack([self._class_weight(c, a) for c, a in enumerate(self.base)])
        self._s = (self.x @ self._t.T).mul_(self.scale)
        if self.weights.r:
            r = redundancy(self._t)
            self._q = r * r
        else:
            r = float("nan")
        return self.terms(self._s.clone(), r)

    def _edited(self, edits: Mapping[int, Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        group = torch.tensor(sorted(edits), dtype=torch.long)
        t_group = torch.stack([self._class_weight(c, edits[c]) for c in sorted(edits)])
        if self._work.shape != self._s.shape:
            self._work = torch.empty_like(self._s)
        s = self._work.copy_(self._s)
        s[:, group] = (self.x @ t_group.T).mul_(self.scale)
        r = float("nan")
        if self.weights.r:
            t = self._t.clone()
            t[group] = t_group
            q = self._q - _pair_contribution(self._t, group) + _pair_contribution(t, group)
            r = math.sqrt(max(q, 0.0))
        return group, t_group, s, r

    def evaluate(self, edits: Mapping[int, Sequence[int]]) -> Terms:
        """Terms of the base with the classes in ``edits`` given those item ids."""
        if not edits:
            return self.terms(self._s.clone(), math.sqrt(self._q) if self.weights.r else float("nan"))
        _, _, s, r = self._edited(edits)
        return self.terms(s, r)

    def commit(self, edits: Mapping[int, Sequence[int]]) -> None:
        """Apply ``edits`` to the base (the same arithmetic as ``evaluate``, so replays are exact)."""
        if not edits:
            return
        group, t_group, s, r = self._edited(edits)
        self._t[group] = t_group
        self._s, self._work = s, self._s
        if self.weights.r:
            self._q = r * r
        for c in edits:
            self.base[c] = tuple(sorted(set(edits[c])))

    def base_scores(self) -> np.ndarray:
        """The base's scaled cosines (N × C), a copy."""
        return self._s.numpy().copy()

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
