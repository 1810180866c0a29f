"""WaffleCLIP (Roth et al., ICCV 2023): random descriptors as a control for the ensembling effect (METHODS.md §2).

For one seed, ``count`` random-word and ``count`` random-character descriptors are drawn once and shared by
every class, with the class name swapped in: "A photo of a {c}, which is/has {random}." (the authors'
raw-prefix phrasing rule). Scores are the mean of cosines, as in CbD. If CbD's gain survives this swap,
the gain came from ensembling, not from meaning. The construction follows the authors' ``waffle`` mode:

* words per random-word descriptor = ``max(1, round(mean words per class name))``; each word drawn from the
  word list and cut to ``round(mean over class names of their mean word length)`` characters;
* a random-character descriptor is ``g = round(mean spaces per class name) + 1`` groups of random characters
  joined by ", ": with ``L = ceil(mean over class names of their longest word's length)``, the total length
  is ``L + g − (L mod g)`` (so an ``L`` already divisible by ``g`` still grows by ``g``, as in their code),
  split evenly into the groups;
* the character pool is every character of the real descriptors' words except ',' and '.', letters of both
  cases, digits and '-' included; with no ``descriptors`` given it is the dataset card's descriptor file
  (a–z only when the dataset has none, stated in the fit info);
* ``mixed`` (their ``waffle_and_gpt``): ``int(2/3·count)`` shared random pairs plus, per class, twice that
  many real descriptors drawn with replacement, then ``3·int(2/3·count)`` of those texts sampled per class
  without replacement — about half real.

Deviation, on purpose: the authors' word list is a pickled English word list; zsclip draws from the
whole-word tokens of CLIP's BPE vocabulary (letters, digits and '-'), which ships with open_clip. The
pipeline reports mean ± std over seeds with ``np.std`` (ddof = 0), as the paper does.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ZsclipError
from ..prompts import PromptSet, descriptor_phrase
from .base import Method, Param, dataset_of, register_method
from .descriptions import SOURCE_DOC
from .pool import DescriptorSource, resolve_descriptors

_WORD = re.compile(r"[a-z0-9][a-z0-9-]*")


@functools.lru_cache(maxsize=1)
def clip_word_list() -> tuple[str, ...]:
    """Whole-word tokens of CLIP's BPE vocabulary made of lower-case letters, digits and '-', in vocabulary order."""
    from open_clip.tokenizer import SimpleTokenizer

    words = (t[:-4] for t in SimpleTokenizer().encoder if t.endswith("</w>"))
    return tuple(w for w in words if w.isascii() and _WORD.fullmatch(w))


def character_pool(descriptors: Sequence[str]) -> list[str]:
    """The characters of the descriptors' words without ',' and '.', sorted (the authors' character list)."""
    words = {w.replace(",", "").replace(".", "") for d in descriptors for w in d.split(" ")}
    return sorted(set("".join(words)))


def shape_of_names(classnames: Sequence[str]) -> dict[str, int]:
    """The authors' lengths from the class names: words per descriptor, word length, character groups."""
    split = [name.split(" ") for name in classnames]
    n_words = max(1, round(float(np.mean([len(ws) for ws in split]))))
    word_length = round(float(np.mean([np.mean([len(w) for w in ws]) for ws in split])))
    groups = round(float(np.mean([name.count(" ") for name in classnames]))) + 1
    longest = math.ceil(float(np.mean([max(len(w) for w in ws) for ws in split])))
    total = longest + groups - longest % groups
    return {"words_per_descriptor": n_words, "word_length": max(1, word_length), "char_groups": groups,
            "group_size": total // groups}


@register_method("waffle")
class WafflePrompts(Method):
    """WaffleCLIP: random-word and random-character descriptors, one shared set per seed."""

    randomised = True
    default_seeds = 7
    parameters = {
        "count": Param(int, "random word + character descriptor pairs (2·count texts per class)", low=1),
        "mixed": Param(bool, "mix in the class's real descriptors (about half), the authors' waffle_and_gpt"),
        "descriptors": Param("source", "real descriptors for 'mixed' and the character pool; " + SOURCE_DOC,
                             nullable=True),
        "before": Param(str, "text before each prompt"),
        "after": Param(str, "text after each prompt"),
        "seed": Param(int, "random seed of this prompt set (the pipeline runs several: --seeds)", low=0),
    }

    def __init__(self, count: int = 15, mixed: bool = False, descriptors: DescriptorSource = None,
                 before: str = "A photo of a ", after: str = ".", seed: int = 0) -> None:
        self.count = count
        self.mixed = mixed
        self.descriptors = descriptors
        self.before = before
        self.after = after
        self.seed = seed

    def _real(self, dataset: Any) -> tuple[list[list[str]] | None, str]:
        try:
            real, source = resolve_descriptors(dataset, self.descriptors)
        except ZsclipError:
            if self.descriptors is not None or self.mixed:
                raise
            return None, "none"
        return real, source

    def build(self, ctx: Any) -> PromptSet:
        dataset = dataset_of(ctx)
        rng = np.random.default_rng(self.seed)
        real, source = self._real(dataset)
        shape = shape_of_names(dataset.classnames)
        flat_real = [d for ds in real or [] for d in ds]
        chars = character_pool(flat_real) if flat_real else list("abcdefghijklmnopqrstuvwxyz")
        words = [w[: shape["word_length"]] for w in clip_word_list()]
        pairs = int(2 / 3 * self.count) if self.mixed else self.count
        if pairs < 1:
            raise ZsclipError(f"waffle with mixed=true needs count ≥ 2 (int(2/3·count) ≥ 1); got count={self.count}")
        shared: list[str] = []
        for _ in range(pairs):
            shared.append(" ".join(words[i] for i in rng.integers(len(words), size=shape["words_per_descriptor"])))
            groups = ("".join(chars[i] for i in rng.integers(len(chars), size=shape["group_size"]))
                      for _ in range(shape["char_groups"]))
            shared.append(", ".join(groups))
        per_class = []
        for c, name in enumerate(dataset.classnames):
            descs = list(shared)
            if self.mixed and real is not None and real[c]:
                own = [real[c][i] for i in rng.integers(len(real[c]), size=2 * pairs)]
                pool = descs + own
                descs = [pool[i] for i in rng.choice(len(pool), 3 * pairs, replace=False)]
            per_class.append([(f"{self.before}{name}, {descriptor_phrase(d, published_quirk=True)}{self.after}", d)
                              for d in descs])
        return PromptSet.from_lists(dataset.classnames, per_class, "mean", "waffle", {
            **shape, "character_pool": "".join(chars) if flat_real else "a-z (the dataset has no descriptors)",
            "descriptor_source": source, "random_pairs": pairs})
