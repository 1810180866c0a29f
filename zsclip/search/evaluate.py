"""The fast fitness evaluator of prompt searches: cached text blocks, one product per candidate.

Fitness (ProAPO, METHODS.md §5) of a prompt set on the k-shot fitting images, from the cosines ``S`` (N × C)
between image features and the set's class weights ``T`` (C × D, unit rows):

    F = w1·top1 + w5·top5 + β·R − γ·CE,   R = ‖triu(T·Tᵀ − I)‖_F,   CE = mean −log softmax(scale·S)[y]

with top-k in percent (top-5 is top-C when there are fewer than 5 classes). ProAPO's argparse defaults are
w1 = w5 = 0.1, β = 0.05, γ = 10; the black-box mode is F = top1. The logit scale is the encoder's (100 when it
has none). R is only computed when β ≠ 0 (it is NaN in the log otherwise): it is the costliest term.

Stage 1 (``TemplateSetEvaluator``): each template's class embeddings ``B_t`` (C × D, one unit text per class)
are computed once and cached, with their cosines with the features ``L_t = X·B_tᵀ`` (N × C, as fixed-point
int32) and the per-class Gram rows of every template pair, ``G[t, t'][c] = B_t[c]·B_t'[c]``. A set's class
weight is the renormalised mean of its blocks, so its cosines are ``Σ_t L_t / ‖Σ_t B_t‖`` per class with
``‖Σ_t B_t[c]‖² = Σ_{t,t'} G[t, t'][c]``: sums of cached arrays, no text encoded and no product with the
embedding dimension per evaluation (R, when its weight is not 0, still needs the set's C × D class weights and
one product). The sums, the ranks and the log-sum-exp run in one fused pass per image row (``_kernels``,
numba); ``evaluate_many`` scores a batch in one pass over the rows, building candidates that differ from an
earlier one by a few templates from its row. Cosine sums are exact integer sums and norms are summed in a
fixed order (the templates' insertion order), so a set's fitness does not depend on which sets were evaluated
before it or beside it — which a resumed job relies on to end as an uninterrupted one does.

Stage 2 (``ClassPromptEvaluator``): per class a list of items, each the sum of its texts' unit embeddings; a
class's weight is the renormalised sum of its items. An edit of a few classes recomputes only those classes'
cosines (and R's terms that involve them) against a committed base.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from numba import types
from numba.typed import List

from ..errors import ZsclipError
from ..prompts import format_template
from ._kernels import FRACTION_BITS, NARROW_LIMIT, edit_terms, gram_pairs, set_factors, sets_terms

log = logging.getLogger(__name__)

#: logit scale when the encoder gives none (trained CLIP's ≈ 100)
DEFAULT_LOGIT_SCALE = 100.0
#: columns per block of R's product
R_BLOCK = 128


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
        """The fitness of these terms (R and CE do not count when their weight is 0: they are then not computed)."""
        weighted_r = self.r * r if self.r else 0.0
        return self.top1 * top1 + self.top5 * top5 + weighted_r - (self.ce * ce if self.ce else 0.0)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Terms:
    """One evaluation: top-1 and top-5 (percent), cross-entropy and R (each NaN when its weight is 0: not
    computed) and the fitness."""

    top1: float
    top5: float
    ce: float
    r: float
    fitness: float

    def row(self) -> dict[str, float]:
        return asdict(self)


def redundancy(t: torch.Tensor) -> float:
    """``‖triu(T·Tᵀ − I)‖_F`` of unit rows ``t`` (C × D), via the smaller of T·Tᵀ and Tᵀ·T.

    The product is single precision (the costliest step of an evaluation with R) and only its upper block
    triangle is formed (blocks of ``R_BLOCK`` columns; the blocks off the diagonal count twice): 5/8 of the
    full product's work at D = 512. Squares of its entries are summed in double.
    """
    t = t.float()
    m = t if t.shape[0] >= t.shape[1] else t.T
    if m.shape[1] <= R_BLOCK:
        fro2 = float((m.T @ m).double().square_().sum())
    else:
        fro2 = 0.0
        for a in range(0, m.shape[1], R_BLOCK):
            g = (m[:, a:a + R_BLOCK].T @ m[:, a:]).double().square_()
            fro2 += float(g[:, :R_BLOCK].sum()) + 2.0 * float(g[:, R_BLOCK:].sum())
    diag2 = float(t.square().sum(1).double().square().sum())
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
        self._rank = np.empty((1, n), dtype=np.int32)
        self._lse = np.empty((1, n), dtype=np.float64)
        self._true = np.empty((1, n), dtype=np.float64)

    def _buffers(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-row outputs of ``m`` candidates (m × N), reused between calls."""
        if len(self._rank) < m:
            n = len(self.y)
            self._rank = np.empty((m, n), dtype=np.int32)
            self._lse = np.empty((m, n), dtype=np.float64)
            self._true = np.empty((m, n), dtype=np.float64)
        return self._rank[:m], self._lse[:m], self._true[:m]

    def terms(self, m: int, r: Sequence[float]) -> list[Terms]:
        """Terms of the ``m`` candidates whose ranks, log-sum-exps and true scaled cosines a kernel just wrote."""
        self.evaluations += m
        rank, lse, true = self._rank[:m], self._lse[:m], self._true[:m]
        n = rank.shape[1]
        top1 = np.count_nonzero(rank == 0, axis=1) * 100.0 / n
        top5 = np.count_nonzero(rank < self.k5, axis=1) * 100.0 / n
        out = []
        for k in range(m):
            ce = float((lse[k] - true[k]).mean()) if self.weights.ce else float("nan")
            out.append(Terms(float(top1[k]), float(top5[k]), ce, r[k],
                             self.weights.combine(float(top1[k]), float(top5[k]), r[k], ce)))
        return out


def _pair_row(a: int, b: int) -> int:
    """Row of the template pair (a, b), b ≤ a, in the triangular Gram cache (template a's pairs are contiguous)."""
    return a * (a + 1) // 2 + b


#: (row, column) indices of the lower triangle of m × m matrices, for the pairs of m-template sets
_TRIL = [np.tril_indices(m) for m in range(33)]


class TemplateSetEvaluator(_Scorer):
    """Stage 1 and hill-climbing: candidates are sets of templates (see the module docstring).

    Cached per template: its class block (C × D float32, for the norms, class weights and R: 0.49 GB for 240
    templates at ImageNet scale, C = 1,000, D = 512) and its cosines with the fitting images as fixed-point
    integers (N × C int32: 0.96 GB for 240 templates and N = 1,000 images); per template pair, its per-class
    Gram row (C float32: 0.12 GB for 240 templates and 1,000 classes, T(T+1)/2 rows), while the Gram cache
    stays under ``gram_bytes`` (2 GiB: about 1,000 templates at 1,000 classes) — above it the Gram rows a set
    needs are computed at each evaluation by the same function, with the same bits (slower, never different).
    """

    #: templates per cached array (the arrays are allocated a chunk at a time, never copied)
    CHUNK = 32
    #: earlier candidates of a batch searched for a base to build a candidate from
    WINDOW = 32

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int,
                 weights: FitnessWeights = FitnessWeights(), logit_scale: float | None = None,
                 gram_bytes: int = 2 << 30) -> None:
        super().__init__(features, labels, num_classes, weights, logit_scale)
        self._index: dict[str, int] = {}
        self._blocks = List.empty_list(types.float32[:, :, ::1])
        self._cos = List.empty_list(types.int32[:, :, ::1])
        self._peak: list[int] = []  # per template, the largest |fixed-point cosine|
        self.gram_bytes = gram_bytes
        self._gram = np.zeros((0, num_classes), dtype=np.float32)
        self._gram_done = 0  # templates whose Gram rows are cached
        self._fp_scale = self.scale * 2.0 ** -FRACTION_BITS

    def __contains__(self, template: str) -> bool:
        return template in self._index

    def __len__(self) -> int:
        return len(self._index)

    def add(self, template: str, block: np.ndarray) -> None:
        """Keep ``block`` (C × D unit rows: the template filled with each class name) and its cosines."""
        if template in self._index:
            return
        b = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
        if b.shape != (self.num_classes, self.x.shape[1]):
            raise ZsclipError(f"template {template!r}: block of shape {tuple(b.shape)}, expected "
                              f"({self.num_classes}, {self.x.shape[1]})")
        i = len(self._index)
        if i % self.CHUNK == 0:
            self._blocks.append(np.empty((self.CHUNK, *b.shape), dtype=np.float32))
            self._cos.append(np.empty((self.CHUNK, len(self.y), self.num_classes), dtype=np.int32))
        self._index[template] = i
        self._blocks[i // self.CHUNK][i % self.CHUNK] = b.numpy()
        fixed = np.rint((self.x @ b.T).double().numpy() * 2.0 ** FRACTION_BITS)
        self._cos[i // self.CHUNK][i % self.CHUNK] = fixed
        self._peak.append(int(np.abs(fixed).max()))

    def _ids(self, templates: Iterable[str]) -> list[int]:
        ids = sorted({self._index[t] for t in templates})
        if not ids:
            raise ZsclipError("cannot evaluate an empty template set")
        return ids

    def _block_sum(self, ids: Sequence[int]) -> torch.Tensor:
        v = self._blocks[ids[0] // self.CHUNK][ids[0] % self.CHUNK].copy()
        for i in ids[1:]:
            np.add(v, self._blocks[i // self.CHUNK][i % self.CHUNK], out=v)
        return torch.from_numpy(v)

    def class_weights(self, templates: Iterable[str]) -> torch.Tensor:
        """The set's class weights: the renormalised mean of its blocks (C × D)."""
        v = self._block_sum(self._ids(templates))
        return v / v.norm(dim=1, keepdim=True)

    # -- norms from Gram rows ---------------------------------------------------------------------------------

    def _pair_grams(self, pairs: np.ndarray) -> np.ndarray:
        """Gram rows (len(pairs) × C) of the template pairs ``pairs`` (P × 2), computed now."""
        out = np.empty((len(pairs), self.num_classes), dtype=np.float32)
        if len(pairs):
            a, b = pairs[:, 0], pairs[:, 1]
            gram_pairs(self._blocks, a // self.CHUNK, a % self.CHUNK, b // self.CHUNK, b % self.CHUNK, out)
        return out

    def _update_gram(self) -> bool:
        """Cache the Gram rows of templates added since the last call; False when the cache would exceed
        ``gram_bytes`` (then it is dropped and rows are computed per evaluation)."""
        t = len(self._index)
        if self._gram_done < 0:
            return False
        if self._gram_done == t:
            return True
        rows = t * (t + 1) // 2
        limit = self.gram_bytes // (self.num_classes * 4)
        if rows > limit:
            log.info("template Gram cache of %d templates would exceed %d bytes: computing Gram rows per "
                     "evaluation", t, self.gram_bytes)
            self._gram = np.zeros((0, self.num_classes), dtype=np.float32)
            self._gram_done = -1
            return False
        if len(self._gram) < rows:
            grown = np.empty((max(rows, min(2 * len(self._gram), limit)), self.num_classes), dtype=np.float32)
            done = self._gram_done * (self._gram_done + 1) // 2
            grown[:done] = self._gram[:done]
            self._gram = grown
        pairs = np.array([(a, b) for a in range(self._gram_done, t) for b in range(a + 1)], dtype=np.int64)
        start = _pair_row(self._gram_done, 0)
        self._gram[start:rows] = self._pair_grams(pairs)
        self._gram_done = t
        return True

    def _factors(self, sets: Sequence[Sequence[int]]) -> np.ndarray:
        """Per candidate and class, ``scale · 2^-FRACTION_BITS / ‖Σ_t b_t[c]‖`` (K × C float32)."""
        firsts, seconds, weights, starts = [], [], [], [0]
        for ids in sets:
            a, b = _TRIL[len(ids)] if len(ids) < len(_TRIL) else np.tril_indices(len(ids))
            ids_arr = np.asarray(ids, dtype=np.int64)
            firsts.append(ids_arr[a])
            seconds.append(ids_arr[b])
            weights.append(np.where(a == b, 1.0, 2.0))
            starts.append(starts[-1] + len(a))
        first, second = np.concatenate(firsts), np.concatenate(seconds)
        if self._update_gram():
            gram, rows = self._gram, first * (first + 1) // 2 + second
        else:
            gram, rows = self._pair_grams(np.stack([first, second], axis=1)), np.arange(len(first), dtype=np.int64)
        out = np.empty((len(sets), self.num_classes), dtype=np.float32)
        set_factors(gram, rows, np.concatenate(weights), np.array(starts, dtype=np.int64), self._fp_scale, out)
        return out

    # -- evaluation -------------------------------------------------------------------------------------------

    def _plan(self, sets: Sequence[Sequence[int]]):
        """Kernel inputs: per candidate its template rows with signs, and the earlier candidate it is built from
        (when that reads fewer rows than a sum from scratch; among equals, one already kept, else the latest);
        int64 sums where int32 could overflow. Kept rows share slots once their last user is done."""
        ops: list[int] = []
        signs: list[int] = []
        starts = [0]
        base = np.full(len(sets), -1, dtype=np.int64)
        wide = np.zeros(len(sets), dtype=np.bool_)
        if len(sets) == 1:
            ids = np.asarray(sets[0], dtype=np.int64)
            wide[0] = sum(self._peak[i] for i in sets[0]) > NARROW_LIMIT
            return (ids // self.CHUNK, ids % self.CHUNK, np.ones(len(ids), dtype=np.int8),
                    np.array([0, len(ids)], dtype=np.int64), base, np.full(1, -1, dtype=np.int64), 0, wide)
        as_sets = [frozenset(s) for s in sets]
        is_base = set()
        for k, ids in enumerate(sets):
            peak = sum(self._peak[i] for i in ids)
            wide[k] = peak > NARROW_LIMIT
            best, best_cost = -1, len(ids)
            if not wide[k]:
                for j in range(k - 1, max(0, k - self.WINDOW) - 1, -1):
                    if wide[j]:
                        continue
                    cost = 1 + len(as_sets[k] ^ as_sets[j])
                    if (cost < best_cost or (cost == best_cost and best >= 0 and j in is_base
                                             and best not in is_base)) \
                            and peak + sum(self._peak[i] for i in as_sets[j] - as_sets[k]) <= NARROW_LIMIT:
                        best, best_cost = j, cost
            if best < 0:
                ops += ids
                signs += [1] * len(ids)
            else:
                base[k] = best
                is_base.add(best)
                added = sorted(as_sets[k] - as_sets[best])
                removed = sorted(as_sets[best] - as_sets[k])
                ops += added + removed
                signs += [1] * len(added) + [-1] * len(removed)
            starts.append(len(ops))
        last_use = {int(b): k for k, b in enumerate(base) if b >= 0}
        keep_slot = np.full(len(sets), -1, dtype=np.int64)
        free: list[int] = []
        n_keep = 0
        for k in range(len(sets)):
            if base[k] >= 0 and last_use[int(base[k])] == k:
                free.append(int(keep_slot[base[k]]))
            if k in last_use:
                if free:
                    keep_slot[k] = free.pop()
                else:
                    keep_slot[k] = n_keep
                    n_keep += 1
        ops_arr = np.array(ops, dtype=np.int64)
        return (ops_arr // self.CHUNK, ops_arr % self.CHUNK, np.array(signs, dtype=np.int8),
                np.array(starts, dtype=np.int64), base, keep_slot, n_keep, wide)

    def _redundancy(self, ids: Sequence[int], factors: np.ndarray) -> float:
        """R of the set ``ids`` whose class weights are its block sum times ``factors / scale`` (the norms of
        the Gram rows, the same the cosines use)."""
        v = self._block_sum(ids).numpy()
        v *= (factors / np.float32(self._fp_scale))[:, None]
        return redundancy(torch.from_numpy(v))

    def evaluate(self, templates: Iterable[str]) -> Terms:
        """The fitness terms of a template set (its order and repeats do not matter)."""
        return self.evaluate_many([templates])[0]

    def evaluate_many(self, candidates: Sequence[Iterable[str]]) -> list[Terms]:
        """The fitness terms of each template set, in one pass over the cached cosines.

        Each candidate's terms are exactly those ``evaluate`` gives it alone: integer sums do not depend on
        which candidate a sum was built from.
        """
        sets = [self._ids(c) for c in candidates]
        if not sets:
            return []
        factors = self._factors(sets)
        chunk_of, slot_of, sign, starts, base, keep_slot, n_keep, wide = self._plan(sets)
        rank, lse, true = self._buffers(len(sets))
        sets_terms(self._cos, chunk_of, slot_of, sign, starts, base, keep_slot, n_keep, wide, factors, self.y,
                   rank, lse, true, need_lse=bool(self.weights.ce))
        r = [self._redundancy(ids, f) if self.weights.r else float("nan") for ids, f in zip(sets, factors)]
        return self.terms(len(sets), r)


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

    def _edit_terms(self, group: np.ndarray, columns: np.ndarray, r: float) -> Terms:
        rank, lse, true = self._buffers(1)
        edit_terms(self._s, group, columns, self.y, rank[0], lse[0], true[0], need_lse=bool(self.weights.ce))
        return self.terms(1, [r])[0]

    def _base_terms(self) -> Terms:
        r = math.sqrt(self._q) if self.weights.r else float("nan")
        return self._edit_terms(self._no_group, self._no_columns, r)

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
        return self._edit_terms(group.numpy(), columns, r)

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
