"""WaffleCLIP (Roth et al., ICCV 2023): random descriptors as a control for the ensembling effect (METHODS.md §2).

For one seed, ``count`` random-word and ``count`` random-character descriptors are drawn once and shared by
every class, with the class name swapped in: "A photo of a {c}, which has {random}.". Scores are the mean
of cosines, as in CbD. If CbD's gain survives this swap, the gain came from ensembling, not from meaning.
Random words come from the whole-word tokens of CLIP's BPE vocabulary (a large English word list that ships
with open_clip), each cut to the mean word length of the class names; random characters come from the
characters of the real descriptors (a–z when none are given). ``mixed`` keeps one third real descriptors.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..datasets import Dataset
from ..errors import ZsclipError
from ..prompts import PromptSet, descriptor_phrase, normalise_descriptor
from .descriptions import resolve_descriptors


@functools.lru_cache(maxsize=1)
def clip_word_list() -> tuple[str, ...]:
    """Lower-case ASCII whole words (≥ 4 letters) of CLIP's BPE vocabulary, in vocabulary order."""
    from open_clip.tokenizer import SimpleTokenizer

    words = (t[:-4] for t in SimpleTokenizer().encoder if t.endswith("</w>"))
    return tuple(w for w in words if len(w) >= 4 and w.isascii() and w.isalpha() and w.islower())


class WafflePrompts:
    """Random-word and random-character descriptors, the same set for every class.

    Args:
        count: word+character pairs per seed (``2 * count`` texts per class).
        n_words: words (or character groups) per random descriptor.
        seeds: one prompt set per seed; ``classify`` reports the mean ± std over them.
        mixed: replace one third of the random descriptors by the class's real ones (needs ``descriptors``).
        descriptors: real descriptors (for ``mixed`` and for the character set), as in ``descriptions``.
        before, after: text around each prompt.
    """

    def __init__(self, count: int = 15, n_words: int = 2, seeds: Sequence[int] = tuple(range(7)), mixed: bool = False,
                 descriptors: str | Path | Mapping[str, list[str]] | None = None, before: str = "A photo of a ",
                 after: str = ".") -> None:
        if count < 1 or n_words < 1 or not seeds:
            raise ZsclipError("waffle needs count ≥ 1, n_words ≥ 1 and at least one seed")
        self.count = count
        self.n_words = n_words
        self.seeds = tuple(seeds)
        self.mixed = mixed
        self.descriptors = descriptors
        self.before = before
        self.after = after

    def build(self, dataset: Dataset, seed: int | None = None) -> PromptSet:
        seed = self.seeds[0] if seed is None else seed
        rng = random.Random(seed)
        real: list[list[str]] | None = None
        if self.mixed or self.descriptors is not None:
            real, _ = resolve_descriptors(dataset, self.descriptors)
            real = [[normalise_descriptor(d) for d in ds if normalise_descriptor(d)] for ds in real]
        name_words = [w for name in dataset.classnames for w in name.split()]
        length = max(1, round(sum(map(len, name_words)) / len(name_words)))
        chars = sorted({ch for ds in real or [] for d in ds for ch in d.lower() if ch.isalpha()}) or \
            list("abcdefghijklmnopqrstuvwxyz")
        words = clip_word_list()
        shared: list[str] = []
        for _ in range(self.count):
            shared.append(" ".join(w[:length] for w in rng.sample(words, self.n_words)))
            shared.append(" ".join("".join(rng.choices(chars, k=length)) for _ in range(self.n_words)))
        per_class = []
        for c, name in enumerate(dataset.classnames):
            descs = list(shared)
            if self.mixed and real is not None and real[c]:
                n_real = min(len(real[c]), len(shared) // 3)
                descs = rng.sample(real[c], n_real) + rng.sample(shared, len(shared) - n_real)
            per_class.append([(f"{self.before}{name}, {descriptor_phrase(d)}{self.after}", d) for d in descs])
        return PromptSet.from_lists(dataset.classnames, per_class, "mean", "waffle", {
            "count": self.count, "n_words": self.n_words, "seeds": list(self.seeds), "seed": seed,
            "mixed": self.mixed, "word_length": length, "before": self.before, "after": self.after,
        })
