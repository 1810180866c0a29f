"""Discriminative description selection, DDS (Ma, Rietdorf, Kotovenko, Hu, Ommer, AAAI 2025; METHODS.md §3).

Training-free, with a small labelled selection set from the training split:

1. the pool ``P`` is the deduplicated union of every class's descriptions (any may serve any class);
2. ``S[d, c]`` = mean over class ``c``'s first ``n`` selection images of ``v(x)·e(d)``;
3. per test image, the neighbourhood ``N(x)`` is its top-``k`` classes by the class-name prompt;
4. for each ``c ∈ N(x)`` the descriptions with ``S[d, c] ≥ S[d, j]`` for all ``j ∈ N(x)`` are ranked by
   ``(1/k) Σ_j (S[d, c] − S[d, j])`` and the top ``m`` kept (none qualifies → the class's own first ``m``);
5. each candidate is scored with its selected descriptions, classname-free
   (``w·v·e("a photo of a {c}.") + mean_d v·e(d)``, ``w`` chosen on the validation split) or with the class
   name (``"A photo of a {c}, {d}."``, mean or max), and the prediction is the best candidate.

The selection is array work over the precomputed ``S`` (a gather, a max, a mean and a top-``m`` per
candidate), done once per distinct neighbourhood and chunked; no text is encoded per image in the
classname-free form.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Dataset
from ..errors import ZsclipError
from ..prompts import format_template, load_templates, normalise_descriptor
from ..scoring import Explanation, ExplanationRow, evaluate
from ..stores import ImageStore, TextEmbeddingCache
from .descriptions import resolve_descriptors

log = logging.getLogger(__name__)

#: added to the scores of the neighbourhood classes so that they rank above every other class
_NEIGHBOURHOOD_OFFSET = 10.0


@dataclass(frozen=True)
class DescriptionPool:
    """The deduplicated descriptions of all classes, and which of them each class brought."""

    texts: tuple[str, ...]
    own: tuple[tuple[int, ...], ...]  # pool indices of each class's descriptions, in file order

    @classmethod
    def from_lists(cls, per_class: Sequence[Sequence[str]]) -> DescriptionPool:
        index: dict[str, int] = {}
        own = []
        for descs in per_class:
            ids = []
            for d in descs:
                d = normalise_descriptor(d)
                if d:
                    ids.append(index.setdefault(d, len(index)))
            own.append(tuple(dict.fromkeys(ids)))
        return cls(tuple(index), tuple(own))


def selection_means(store: ImageStore, num_classes: int, n: int) -> tuple[np.ndarray, int]:
    """Mean embedding of the first ``n`` store images of each class (``n`` cut to the smallest class)."""
    labels = np.asarray(store.labels)
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ZsclipError(f"the selection split has no image of class {missing}; DDS needs every class")
    n = int(min(n, counts.min()))
    order = np.argsort(labels, kind="stable")  # store order within each class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = (starts[:, None] + np.arange(n)[None, :]).ravel()
    emb = np.asarray(store.embeddings, dtype=np.float32)[order[rows]]
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
    """A fitted DDS: scores images by selecting descriptions per image over the precomputed ``S``."""

    def __init__(self, *, classnames: Sequence[str], pool: DescriptionPool, S: np.ndarray, name_emb: np.ndarray,
                 pool_emb: np.ndarray | None, k: int, m: int, form: str, aggregation: str, weight: float,
                 template: str, cache: TextEmbeddingCache, chunk_size: int = 1024) -> None:
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
        for i, ids in enumerate(pool.own):
            ids = ids[:m]
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
        return np.where(used, sims, 0).sum(axis=2) / np.maximum(counts, 1)

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


class DDS:
    """Discriminative description selection (see the module docstring).

    Args:
        descriptors: the description source (file, mapping, ``attributes`` or the dataset card's default).
        k: neighbourhood size; m: descriptions per candidate; n: selection images per class.
        form: ``classname-free`` (descriptions encoded alone, plus ``w`` × the class-name prompt) or
            ``classname`` ("A photo of a {c}, {d}.").
        aggregation: ``mean`` or ``max`` of the selected descriptions' cosines (``classname`` form).
        weight: ``w`` of the classname-free form; ``None`` picks it on ``val_split`` from ``weight_grid``.
        template: the class-name prompt for the neighbourhood and for ``w``: a template with ``{}``, or a
            template set (``ensemble``, a file; see ``load_templates``) whose renormalised mean is used.
        selection_split, val_split: where ``S`` and ``w`` come from; never the test split.
    """

    def __init__(self, descriptors: str | Path | Mapping[str, list[str]] | None = None, k: int = 3, m: int = 5,
                 n: int = 1000, form: str = "classname-free", aggregation: str = "mean", weight: float | None = None,
                 weight_grid: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                 template: str = "a photo of a {}.", selection_split: str = "train", val_split: str = "val") -> None:
        if form not in ("classname-free", "classname"):
            raise ZsclipError(f"DDS form must be classname-free or classname, not {form!r}")
        if aggregation not in ("mean", "max"):
            raise ZsclipError(f"DDS aggregates by mean or max, not {aggregation!r}")
        if k < 1 or m < 1 or n < 1:
            raise ZsclipError("DDS needs k, m and n of at least 1")
        self.descriptors = descriptors
        self.k, self.m, self.n = k, m, n
        self.form = form
        self.aggregation = aggregation
        self.weight = weight
        self.weight_grid = tuple(weight_grid)
        self.template = template
        self.selection_split = selection_split
        self.val_split = val_split
        self.options: dict[str, Any] = {}
        #: images encoded by ``fit`` for its own splits (selection, validation), for the run record
        self.images_encoded: dict[str, int] = {}

    def fit(self, dataset: Dataset, encoder: Any, cache: TextEmbeddingCache | None = None,
            store_options: Mapping[str, Any] | None = None) -> DDSClassifier:
        """Precompute ``S`` on the selection split (and ``w`` on the validation split); return the classifier."""
        store_options = dict(store_options or {})
        for split in (self.selection_split, self.val_split if self.weight is None else None):
            if split is not None and split == "test":
                raise ZsclipError("DDS never selects or tunes on the test split")
        cache = cache if cache is not None else TextEmbeddingCache(encoder)
        per_class, source = resolve_descriptors(dataset, self.descriptors)
        pool = DescriptionPool.from_lists(per_class)
        if not pool.texts:
            raise ZsclipError(f"the descriptors ({source}) are empty: DDS needs descriptions")
        sel_store = ImageStore.build(dataset, self.selection_split, encoder, **store_options)
        self.images_encoded = {self.selection_split: sel_store.build_stats.images_encoded}
        means, n_used = selection_means(sel_store, len(dataset.classnames), self.n)
        pool_emb = cache.encode(list(pool.texts))
        S = pool_emb @ means.T
        templates = load_templates(self.template, dataset.card)
        name_emb = cache.encode([format_template(t, c) for c in dataset.classnames for t in templates])
        name_emb = name_emb.reshape(len(dataset.classnames), len(templates), -1).mean(axis=1)
        name_emb /= np.linalg.norm(name_emb, axis=1, keepdims=True)  # an ensemble's renormalised mean
        weight = self.weight if self.weight is not None else 1.0
        clf = DDSClassifier(classnames=dataset.classnames, pool=pool, S=S, name_emb=name_emb,
                            pool_emb=pool_emb if self.form == "classname-free" else None, k=self.k, m=self.m,
                            form=self.form, aggregation=self.aggregation, weight=weight, template=self.template,
                            cache=cache)
        grid_results: dict[str, float] = {}
        if self.form == "classname-free" and self.weight is None:
            if self.val_split not in dataset.splits:
                raise ZsclipError(f"dataset {dataset.name!r} has no {self.val_split!r} split to choose the class-name "
                                  "weight on; pass --dds-weight W")
            val = ImageStore.build(dataset, self.val_split, encoder, **store_options)
            self.images_encoded[self.val_split] = val.build_stats.images_encoded
            for w in self.weight_grid:
                clf.weight = w
                grid_results[f"{w:g}"] = evaluate(clf.scores(val.embeddings), val.labels, dataset.classnames)["top1"]
            clf.weight = float(max(self.weight_grid, key=lambda w: (grid_results[f"{w:g}"], -w)))
            log.info("DDS class-name weight %g chosen on %s (top-1 by weight: %s)", clf.weight, self.val_split,
                     grid_results)
        self.options = {
            "descriptors": source, "k": self.k, "m": self.m, "n_requested": self.n, "n_per_class": n_used,
            "form": self.form, "aggregation": self.aggregation if self.form == "classname" else "mean",
            "template": self.template, "selection_split": self.selection_split, "pool_size": len(pool.texts),
            "weight": clf.weight if self.form == "classname-free" else None,
            "weight_chosen_on": (self.val_split if grid_results else None),
            "weight_grid_top1": grid_results or None,
        }
        return clf
