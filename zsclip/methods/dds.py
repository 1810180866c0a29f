"""Discriminative description selection, DDS (Ma, Rietdorf, Kotovenko, Hu, Ommer, AAAI 2025; METHODS.md §3).

Training-free, with a small labelled selection set from the training split:

1. the pool ``P`` is the deduplicated union of every class's descriptions (any may serve any class);
2. ``S[d, c]`` = mean over class ``c``'s first ``n`` selection images of ``v(x)·e(d)``;
3. per test image, the neighbourhood ``N(x)`` is its top-``k`` classes by the class-name prompt;
4. for each ``c ∈ N(x)`` the descriptions with ``S[d, c] ≥ S[d, j]`` for all ``j ∈ N(x)`` are ranked by
   ``(1/k) Σ_j (S[d, c] − S[d, j])`` and the top ``m`` kept (none qualifies → the class's own first ``m`` in
   pool order, the pool being built from each class's list sorted, as in the authors' code);
5. each candidate is scored with its selected descriptions, classname-free
   (``w·v·e("a photo of a {c}.") + mean_d v·e(d)``, ``w`` chosen on the validation split) or with the class
   name (``"A photo of a {c}, {d}."``, mean or max; a selection shorter than ``m`` is padded to ``m`` by
   cyclic repetition before the mean, as in the authors' code), and the prediction is the best candidate.

The selection is array work over the precomputed ``S`` (a gather, a max, a mean and a top-``m`` per
candidate), done once per distinct neighbourhood and chunked; no text is encoded per image in the
classname-free form.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ZsclipError
from ..prompts import format_template, load_templates
from ..scoring import Explanation, ExplanationRow, choose_on_validation, evaluate
from ..stores import TextEmbeddingCache
from .base import Method, Param, register_method
from .descriptions import SOURCE_DOC
from .pool import DescriptionPool, DescriptorSource, resolve_descriptors

log = logging.getLogger(__name__)

#: added to the scores of the neighbourhood classes so that they rank above every other class
_NEIGHBOURHOOD_OFFSET = 10.0


def selection_means(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, n: int) -> tuple[np.ndarray, int]:
    """Mean embedding of the first ``n`` images of each class, in the given order (``n`` cut to the smallest
    class)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ZsclipError(f"the selection images have no image of class {missing}; DDS needs every class")
    n = int(min(n, counts.min()))
    order = np.argsort(labels, kind="stable")  # store order within each class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = (starts[:, None] + np.arange(n)[None, :]).ravel()
    emb = np.asarray(np.asarray(embeddings)[order[rows]], dtype=np.float32)
    return emb.reshape(num_classes, n, -1).mean(axis=1), n


def select(S_T: np.ndarray, neighbourhoods: np.ndarray, own_first: np.ndarray, own_count: np.ndarray,
           m: int) -> tuple[np.ndarray, np.ndarray]:
    """DDS step 4 for a block of images.

    Each description favours the candidate where its ``S`` is largest, with rank ``max − mean`` over the
    neighbourhood, which equals ``(1/k) Σ_j (S[d, c] − S[d, j])`` for the favoured ``c``. The top ``m`` per
    candidate are found among the block's best-ranked ``4·k·m`` descriptions; rows where that short list
    holds fewer than ``m`` for a candidate that has more are redone over the whole pool, so the result is
    exact.

    Args:
        S_T: ``C × |P|`` transposed selection matrix (C-contiguous, so a class's row is one gather).
        neighbourhoods: ``B × k`` class indices.
        own_first: ``C × m`` each class's own first ``m`` pool indices (padded with -1).
        own_count: ``C`` how many of those are real.
        m: descriptions per candidate.

    Returns:
        ``B × k × m`` pool indices (-1 = unused slot) and ``B × k`` counts of used slots.
    """
    import torch

    b, k = neighbourhoods.shape
    s_n = torch.from_numpy(S_T[neighbourhoods])  # B × k × |P|
    rank = s_n.amax(dim=1) - s_n.mean(dim=1)  # max − mean over the neighbourhood, per description
    pool = S_T.shape[1]
    short = min(pool, 4 * k * m)
    idx = rank.topk(short, dim=1).indices  # the best-ranked descriptions, best first
    # which candidate each short-listed description favours (np.argmax: ties go to the first candidate)
    group = torch.from_numpy(np.argmax(np.take_along_axis(s_n.numpy(), idx.numpy()[:, None, :], axis=2), axis=1))
    chosen = np.full((b, k, m), -1, dtype=np.int64)
    counts = np.zeros((b, k), dtype=np.int64)
    for a in range(k):
        mine = group == a
        slot = mine.cumsum(dim=1) - 1
        take = mine & (slot < m)
        buf = torch.full((b, m + 1), -1, dtype=torch.int64)
        buf.scatter_(1, torch.where(take, slot, m), torch.where(take, idx, -1))
        chosen[:, a, :] = buf[:, :m].numpy()
        counts[:, a] = take.sum(dim=1).numpy()
        rows = np.flatnonzero(counts[:, a] < m)  # fewer than m in the short list: are there more in the pool?
        if len(rows):
            favours_a = np.argmax(s_n.numpy()[rows], axis=1) == a  # rows × |P|
            redo = rows[favours_a.sum(axis=1) > counts[rows, a]]
            if len(redo):  # the short list missed some of this candidate's descriptions: use the whole pool
                keep = torch.from_numpy(favours_a[np.isin(rows, redo)])
                top_vals, top = torch.where(keep, rank[redo], -torch.inf).topk(min(m, pool), dim=1)
                ok = torch.isfinite(top_vals).numpy()
                chosen[redo, a, : top.shape[1]] = np.where(ok, top.numpy(), -1)
                counts[redo, a] = ok.sum(axis=1)
        none = counts[:, a] == 0  # fallback: the class's own first m
        if none.any():
            cls = neighbourhoods[none, a]
            chosen[none, a, :] = own_first[cls]
            counts[none, a] = own_count[cls]
    return chosen, counts


class DDSClassifier:
    """A fitted DDS: scores images by selecting descriptions per image over the precomputed ``S``.

    ``fallback`` says which of a class's descriptions it falls back to when none qualifies: ``pool-order``
    (its first ``m`` in pool order, the authors') or ``file-order``. The class-name form's mean pads a
    selection shorter than ``m`` to ``m`` by cyclic repetition, as the authors do (averaging only what was
    selected was not better on the toy world's validation split: 63.4 both, so it is not offered).
    """

    def __init__(self, *, classnames: Sequence[str], pool: DescriptionPool, S: np.ndarray, name_emb: np.ndarray,
                 pool_emb: np.ndarray | None, k: int, m: int, form: str, aggregation: str, weight: float,
                 template: str, cache: TextEmbeddingCache, fallback: str = "pool-order",
                 chunk_size: int = 1024) -> None:
        self.classnames = tuple(classnames)
        self.pool = pool
        self.S_T = np.ascontiguousarray(S.T, dtype=np.float32)  # C × |P|
        self.name_emb = name_emb
        self.pool_emb = pool_emb
        self.k = min(k, len(classnames))
        self.m = m
        self.form = form
        self.aggregation = aggregation
        self.weight = weight
        self.template = template
        self.cache = cache
        self.chunk_size = chunk_size
        c = len(classnames)
        self._own_first = np.full((c, m), -1, dtype=np.int64)
        self._own_count = np.zeros(c, dtype=np.int64)
        for i in range(c):
            ids = (pool.own_in_pool_order(i) if fallback == "pool-order" else list(pool.own[i]))[:m]
            self._own_first[i, : len(ids)] = ids
            self._own_count[i] = len(ids)

    def pair_text(self, c: int, d: int) -> str:
        """The classname-included text of class ``c`` with pool description ``d``."""
        return f"A photo of a {self.classnames[c]}, {self.pool.texts[d]}."

    def neighbourhoods(self, image_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class-name scores (``N × C``) and each image's top-``k`` classes (``N × k``, best first)."""
        import torch

        names = np.asarray(image_embeddings, dtype=np.float32) @ self.name_emb.T
        return names, torch.from_numpy(names).topk(self.k, dim=1).indices.numpy()

    def _select_for(self, hoods: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``select`` for every row of ``hoods``, computed once per distinct neighbourhood.

        The selection depends on the neighbourhood as a set, and images of similar classes share
        neighbourhoods, so rows are sorted, deduplicated, selected in chunks and mapped back.
        """
        order = np.argsort(hoods, axis=1, kind="stable")
        unique, inverse = np.unique(np.take_along_axis(hoods, order, axis=1), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        chosen_u, counts_u = [], []
        for start in range(0, len(unique), self.chunk_size):
            ch, co = select(self.S_T, unique[start : start + self.chunk_size], self._own_first, self._own_count,
                            self.m)
            chosen_u.append(ch)
            counts_u.append(co)
        chosen_s, counts_s = np.concatenate(chosen_u)[inverse], np.concatenate(counts_u)[inverse]
        back = np.argsort(order, axis=1)  # sorted position of each original candidate
        return (np.take_along_axis(chosen_s, back[:, :, None], axis=1),
                np.take_along_axis(counts_s, back, axis=1))

    def selections(self, image_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbourhoods ``N × k``, selected pool indices ``N × k × m`` (-1 unused) and counts ``N × k``."""
        _, hoods = self.neighbourhoods(image_embeddings)
        return (hoods, *self._select_for(hoods))

    def _candidate_scores(self, v: np.ndarray, names: np.ndarray, hoods: np.ndarray, chosen: np.ndarray,
                          counts: np.ndarray) -> np.ndarray:
        """``B × k`` scores of the candidates from their selected descriptions."""
        used = chosen >= 0
        if self.form == "classname-free":
            picked = np.einsum("bkmd,bd->bkm", self.pool_emb[np.where(used, chosen, 0)], v)
            desc_mean = np.where(used, picked, 0).sum(axis=2) / np.maximum(counts, 1)
            return self.weight * np.take_along_axis(names, hoods, axis=1) + desc_mean
        pool_size = len(self.pool.texts)
        keys = np.repeat(hoods[..., None], self.m, axis=2)[used] * pool_size + chosen[used]
        unique, inverse = np.unique(keys, return_inverse=True)
        pair_emb = self.cache.encode([self.pair_text(int(u // pool_size), int(u % pool_size)) for u in unique])
        e = np.zeros(chosen.shape + (v.shape[1],), dtype=np.float32)
        e[used] = pair_emb[inverse.ravel()]
        sims = np.einsum("bkmd,bd->bkm", e, v)
        if self.aggregation == "max":
            return np.where(used, sims, -np.inf).max(axis=2)
        return (np.where(used, sims, 0) * self._slot_weights(counts)).sum(axis=2)

    def _slot_weights(self, counts: np.ndarray) -> np.ndarray:
        """``… × m`` weights of the selected slots in the class-name form's mean: a selection of ``L < m`` is
        padded to ``m`` by cyclic repetition, so slot ``j < L`` counts ``m // L + (j < m % L)`` times out of
        ``m``."""
        L = np.maximum(counts, 1)[..., None]
        j = np.arange(self.m)
        reps = (self.m // L) + (j < self.m % L)
        return np.where(j < L, reps / self.m, 0.0)

    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        """``N × C`` scores: the neighbourhood ranked by DDS above all other classes (ranked by class name)."""
        v_all = np.asarray(image_embeddings, dtype=np.float32)
        names, hoods = self.neighbourhoods(v_all)
        chosen, counts = self._select_for(hoods)
        out = names.copy()
        for start in range(0, len(v_all), self.chunk_size):
            sl = slice(start, start + self.chunk_size)
            cand = self._candidate_scores(v_all[sl], names[sl], hoods[sl], chosen[sl], counts[sl])
            np.put_along_axis(out[sl], hoods[sl], cand + _NEIGHBOURHOOD_OFFSET, axis=1)
        return out

    def predict(self, image_embeddings: np.ndarray) -> np.ndarray:
        return self.scores(image_embeddings).argmax(axis=1)

    def explain(self, image_embedding: np.ndarray, true_label: int | None = None) -> Explanation:
        """Each candidate class of the neighbourhood with the descriptions DDS selected for it."""
        v = np.asarray(image_embedding, dtype=np.float32).reshape(1, -1)
        names, hoods = self.neighbourhoods(v)
        chosen, counts = select(self.S_T, hoods, self._own_first, self._own_count, self.m)
        cand = self._candidate_scores(v, names, hoods, chosen, counts)[0]
        order = [int(a) for a in np.argsort(-cand, kind="stable")]
        classes = [int(hoods[0, a]) for a in order]
        runner = next((c for c in classes[1:] if c != true_label), classes[0])
        rows = []
        for a, c in zip(order, classes):
            role = ("predicted" if c == classes[0] else "true" if c == true_label
                    else "runner-up" if c == runner else "candidate")
            picked = [int(d) for d in chosen[0, a] if d >= 0]
            texts = [self.pool.texts[d] if self.form == "classname-free" else self.pair_text(c, d) for d in picked]
            emb = self.pool_emb[picked] if self.pool_emb is not None else self.cache.encode(texts)
            sims = emb @ v[0]
            for i in np.argsort(-sims, kind="stable"):
                rows.append(ExplanationRow(role, self.classnames[c], float(cand[a]), self.pool.texts[picked[i]],
                                           texts[i], float(sims[i])))
        predicted = self.classnames[classes[0]]
        return Explanation(predicted, self.classnames[true_label] if true_label is not None else None,
                           self.classnames[runner], tuple(rows))


@register_method("dds")
class DDS(Method):
    """DDS: per image, the descriptions that separate its top-k classes, selected over S from the fit images."""

    kind = "fitted"
    parameters = {
        "descriptors": Param("source", "the description pool's source; " + SOURCE_DOC, nullable=True),
        "k": Param(int, "neighbourhood size: the image's top-k classes by the class-name prompt", low=1),
        "m": Param(int, "descriptions selected per candidate class", low=1),
        "n": Param(int, "selection images per class (the first n of the fit role; cut to the smallest class)",
                   low=1),
        "form": Param(str, "classname-free (w·name prompt + mean of descriptions encoded alone) or classname "
                      "('A photo of a {c}, {d}.')", choices=("classname-free", "classname")),
        "aggregation": Param(str, "classname form: mean or max of the selected descriptions' cosines",
                             choices=("mean", "max")),
        "weight": Param(float, "classname-free: the class-name weight w; None chooses it on the choose role "
                        "(validation) from weight_grid", nullable=True),
        "weight_grid": Param("floats", "candidate weights w (ties go to the smaller w)"),
        "template": Param("templates", "class-name prompt for the neighbourhood and for w: a template with {} or a "
                          "template set (ensemble, a file) whose renormalised mean is used"),
        "fallback": Param(str, "when no description qualifies for a candidate: its own first m in pool-order "
                          "(the authors', pool = each class's list sorted) or file-order (toy-world val top-1 "
                          "68.9 vs 68.8 with the ensemble prompt and w = 4: one image)",
                          choices=("pool-order", "file-order")),
    }

    def __init__(self, descriptors: DescriptorSource = None, k: int = 3, m: int = 5, n: int = 1000,
                 form: str = "classname-free", aggregation: str = "mean", weight: float | None = None,
                 weight_grid: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                 template: str | Sequence[str] = "a photo of a {}.", fallback: str = "pool-order") -> None:
        self.descriptors = descriptors
        self.k, self.m, self.n = k, m, n
        self.form = form
        self.aggregation = aggregation
        self.weight = weight
        self.weight_grid = weight_grid
        self.template = template
        self.fallback = fallback

    def fit(self, ctx: Any) -> DDS:
        """Precompute ``S`` on the ``fit`` role's images (and ``w`` on the ``choose`` role's); returns ``self``."""
        self.check_params()
        dataset = ctx.dataset
        per_class, source = resolve_descriptors(dataset, self.descriptors)
        pool = DescriptionPool.from_lists(per_class, "sorted" if self.fallback == "pool-order" else "file")
        if not pool.texts:
            raise ZsclipError(f"the descriptors ({source}) are empty: DDS needs descriptions")
        cache = ctx.text_cache
        fit = ctx.features("fit")
        means, n_used = selection_means(fit.embeddings, fit.labels, len(dataset.classnames), self.n)
        pool_emb = cache.encode(list(pool.texts))
        S = pool_emb @ means.T
        templates = (load_templates(self.template, dataset.card) if isinstance(self.template, str)
                     else list(self.template))
        name_emb = cache.encode([format_template(t, c) for c in dataset.classnames for t in templates])
        name_emb = name_emb.reshape(len(dataset.classnames), len(templates), -1).mean(axis=1)
        name_emb /= np.linalg.norm(name_emb, axis=1, keepdims=True)  # an ensemble's renormalised mean
        clf = DDSClassifier(classnames=dataset.classnames, pool=pool, S=S, name_emb=name_emb,
                            pool_emb=pool_emb if self.form == "classname-free" else None, k=self.k, m=self.m,
                            form=self.form, aggregation=self.aggregation,
                            weight=self.weight if self.weight is not None else 1.0, template=str(self.template),
                            cache=cache, fallback=self.fallback)
        grid_results: dict[str, float] = {}
        chosen_on = None
        if self.form == "classname-free" and self.weight is None:
            val = ctx.features("choose")
            chosen_on = val.split

            def top1_with(w: float) -> float:
                clf.weight = w
                return evaluate(clf.scores(val.embeddings), val.labels, dataset.classnames)["top1"]

            clf.weight, grid_results = choose_on_validation(self.weight_grid, top1_with)
            log.info("DDS class-name weight %g chosen on %s (top-1 by weight: %s)", clf.weight, chosen_on,
                     grid_results)
        self.classifier_ = clf
        self.classnames_ = tuple(dataset.classnames)
        self.fit_info_ = {
            "descriptor_source": source, "pool_size": len(pool.texts), "selection_split": fit.split,
            "n_per_class": n_used, "weight_used": clf.weight if self.form == "classname-free" else None,
            "weight_chosen_on": chosen_on, "weight_grid_top1": grid_results or None,
        }
        return self

    @property
    def classnames(self) -> tuple[str, ...]:
        return self.classnames_

    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        """``N × C`` scores: the neighbourhood ranked by DDS above all other classes (ranked by class name)."""
        return self.classifier_.scores(image_embeddings)

    def explain(self, image_embedding: np.ndarray, true_label: int | None = None) -> Explanation:
        """Each candidate class of the neighbourhood with the descriptions DDS selected for it."""
        return self.classifier_.explain(image_embedding, true_label)
