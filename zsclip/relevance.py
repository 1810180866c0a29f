"""REAL's relevance filter: an LLM judges whether matched captions really mean the class, and the tail is
the 20% of classes with the fewest relevant captions.

A caption that contains a class's name does not always picture the class ("a tiger shark" matches
"tiger"). REAL (METHODS §6) asks an LLM, per sampled caption, "Does the '{matched name}' in '{caption}'
refer to {the concept}? (Yes/No)", counts an answer as yes only when it is exactly "yes" (case, surrounding
whitespace and punctuation ignored: "Yes." is yes, "Yes, it does" is not), and estimates
``relevant_total = yes-rate × actual_freq``. Captions are judged in a seeded random order until at least
``min_judged`` are judged with at least ``min_yes`` yes answers, or ``max_judged`` are judged, or the class
has no more captions (the paper: 1000, 200, about 10k). The tail is the ``round(0.2·C)`` classes with the
lowest ``relevant_total``; the authors' code takes ``int(0.2·C) + 1``, one class too many whenever
``0.2·C`` is a whole number, which zsclip does not copy.

Questions go through ``zsclip.llm.LLMClient``: cached (a repeated run makes no call), budgeted
(``max_calls``/``max_cost``) and resumable after a budget stop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .corpus_count import ClassNames, match_rows, phrase_of
from .errors import ZsclipError

if TYPE_CHECKING:
    from .corpus import Corpus
    from .llm import LLMClient

logger = logging.getLogger(__name__)

#: the question REAL asks per caption (METHODS §6)
QUESTION = "Does the '{name}' in '{caption}' refer to {concept}? (Yes/No)"
#: how the class is named in the question by default: its official name
DEFAULT_CONCEPT = "{name}"
DEFAULT_MIN_JUDGED = 1000
DEFAULT_MIN_YES = 200
DEFAULT_MAX_JUDGED = 10_000
TAIL_SHARE = 0.2
#: completion tokens requested per question: the answer is one word
MAX_ANSWER_TOKENS = 8
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def is_yes(reply: str) -> bool:
    """Whether an LLM reply is exactly "yes", ignoring case and leading/trailing whitespace and punctuation."""
    return _EDGES.sub("", reply).lower() == "yes"


def stop_point(answers: Sequence[bool], min_judged: int, min_yes: int, max_judged: int) -> int | None:
    """How many of ``answers`` (in judging order) the estimate uses: the first ``n`` with ``n ≥ min_judged``
    and at least ``min_yes`` yes among them, or ``n = max_judged``; ``None`` when neither is reached yet."""
    yes = 0
    for n, answer in enumerate(answers, 1):
        yes += bool(answer)
        if (n >= min_judged and yes >= min_yes) or n >= max_judged:
            return n
    return None


@dataclass
class ClassRelevance:
    """The judged sample of one class: ``judged`` answers, ``yes`` of them yes, out of ``actual_freq``
    matching captions; ``failed`` questions got no usable reply (not judged)."""

    key: str
    name: str
    actual_freq: int
    judged: int = 0
    yes: int = 0
    failed: int = 0

    @property
    def yes_rate(self) -> float:
        return self.yes / self.judged if self.judged else 0.0

    @property
    def relevant_total(self) -> float:
        """The estimated number of matching captions that really mean the class: yes-rate × actual_freq."""
        return self.yes_rate * self.actual_freq


def tail_size(num_classes: int, share: float = TAIL_SHARE) -> int:
    """``round(share · C)`` classes (not the authors' ``int(share · C) + 1``)."""
    return int(round(share * num_classes))


def tail_classes(classes: Sequence[ClassRelevance], share: float = TAIL_SHARE) -> list[int]:
    """Indices of the ``tail_size`` classes with the lowest ``relevant_total`` (ties: file order), ascending."""
    order = sorted(range(len(classes)), key=lambda i: (classes[i].relevant_total, i))
    return sorted(order[:tail_size(len(classes), share)])


def class_candidates(found: dict[str, np.ndarray], names: Sequence[str], seed: int,
                     class_index: int) -> tuple[np.ndarray, list[str]]:
    """The distinct rows matched by any name of a class, in a seeded random order, each with the name the
    question quotes: the longest (most words) of its names that matched it, the earlier name on a tie."""
    by_row: dict[int, str] = {}
    for name in sorted(names, key=lambda n: -len(phrase_of(n))):
        for row in found.get(name, ()):
            by_row.setdefault(int(row), name)
    rows = np.array(sorted(by_row), dtype=np.int64)
    np.random.default_rng([seed, class_index]).shuffle(rows)
    return rows, [by_row[int(r)] for r in rows]


def judge_relevance(corpus: Corpus, classes: Sequence[ClassNames], client: LLMClient, *,
                    concept: str = DEFAULT_CONCEPT, prefix: str | None = None, seed: int = 0,
                    min_judged: int = DEFAULT_MIN_JUDGED, min_yes: int = DEFAULT_MIN_YES,
                    max_judged: int = DEFAULT_MAX_JUDGED) -> list[ClassRelevance]:
    """Judge each class's matching captions with ``client`` until the stopping rule holds (module docstring).

    ``concept`` names the class in the question (``{name}``: its official name, e.g. "the bird {name}").
    Questions are sent in chunks; answers past the stopping point (sent in the same chunk) are cached but
    not counted, so the estimate does not depend on the chunk size. Raises ``BudgetExceeded`` when the
    client's budget runs out (run again to resume from the cache).
    """
    if not 1 <= min_judged <= max_judged:
        raise ZsclipError(f"need 1 ≤ min_judged ≤ max_judged, got {min_judged} and {max_judged}")
    if min_yes < 0:
        raise ZsclipError(f"min_yes must be 0 or more, got {min_yes}")
    if "{name}" not in concept:
        raise ZsclipError(f"the concept {concept!r} must contain {{name}} (where the class name goes)")
    found = match_rows(corpus, classes, prefix)
    out: list[ClassRelevance] = []
    for index, (cls, per_name) in enumerate(zip(classes, found)):
        rows, quoted = class_candidates(per_name, cls.names, seed, index)
        result = ClassRelevance(cls.key, cls.name, len(rows))
        answers: list[bool] = []
        sent = 0
        what = concept.format(name=cls.name)
        while sent < len(rows) and stop_point(answers, min_judged, min_yes, max_judged) is None:
            chunk = min(len(rows) - sent, max_judged - len(answers), max(min_judged - len(answers), 32))
            captions = corpus.captions(rows[sent:sent + chunk])
            prompts = [QUESTION.format(name=n, caption=c or "", concept=what)
                       for n, c in zip(quoted[sent:sent + chunk], captions)]
            for reply in client.complete_many(prompts, is_yes, max_parse_attempts=1, temperature=0.0,
                                              max_tokens=MAX_ANSWER_TOKENS):
                if reply.ok:
                    answers.append(bool(reply.value))
                else:
                    result.failed += 1
            sent += chunk
        used = stop_point(answers, min_judged, min_yes, max_judged) or len(answers)
        result.judged, result.yes = used, sum(answers[:used])
        logger.info("class %s (%s): %d of %d judged yes, of %d captions", cls.key, cls.name, result.yes,
                    result.judged, result.actual_freq)
        out.append(result)
    return out


def relevance_report(results: Sequence[ClassRelevance], params: dict[str, Any],
                     share: float = TAIL_SHARE) -> dict[str, Any]:
    """The JSON ``zsclip corpus relevance`` writes: params, per class counts and estimate, the tail keys."""
    tail = set(tail_classes(results, share))
    return {
        "params": {**params, "tail_share": share, "tail_size": len(tail)},
        "classes": {r.key: {"name": r.name, "actual_freq": r.actual_freq, "judged": r.judged, "yes": r.yes,
                            "failed": r.failed, "yes_rate": round(r.yes_rate, 6),
                            "relevant_total": round(r.relevant_total, 3), "tail": i in tail}
                    for i, r in enumerate(results)},
        "tail": [results[i].key for i in sorted(tail)],
    }
