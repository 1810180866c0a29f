"""LLM hill-climbing over prompt templates (Liu, Lin et al., CVPR 2024; METHODS.md §4), as a resumable job.

As the authors' released code by default: every template of the initial pool is scored alone (its class
weight is one text per class) on the k-shot fitting images; then, per iteration, all templates seen so far
are stable-sorted by fitness, the best ``k`` are the good ones and the worst ``k`` (worst first) the bad ones,
and ONE single-turn chat call at temperature 1 asks for ``per_call`` new templates. Only reply lines that
begin exactly with "- " count; a reply is rejected when it has none, or one lacks "{}" or fails ``.format``,
and asked again up to 15 times. A template already seen is skipped; the others are scored and join the pool.

Options beyond the released code (off by default): scores shown in the meta-prompt, restarts (independent
climbs from the initial pool; a template seen in any climb is not scored again), and the feedback ablation
(``good+bad``, ``good`` only, or ``none``: the same number of templates drawn at random from the pool and
shown without saying which did well). Each request carries a ``seed`` derived from the job seed, climb,
iteration and attempt, so repeated requests are distinct, cached and replayed on resume. An iteration whose
15 replies are all invalid adds nothing and is counted in ``failed_iterations``. Test images are never seen:
the finalists are chosen on validation after the search (``zsclip.search.runner``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ZsclipError
from ..generate import fill, meta_prompt_path, read_meta_prompt
from .evaluate import TemplateSetEvaluator, Terms
from .job import StepContext, new_rng_state, rng_from

logger = logging.getLogger(__name__)

FEEDBACK_MODES = ("good+bad", "good", "none")
MAX_ASKS = 15
GOOD_HEADING = "Templates that worked well:"
BAD_HEADING = "Templates that worked badly, worst first:"
NEUTRAL_HEADING = "Some templates:"


def parse_templates(text: str) -> list[str]:
    """The templates of a reply: lines starting exactly with "- ". Raises ``ValueError`` when there is none,
    or one lacks "{}" or cannot be filled with ``.format``."""
    found = [line[2:].strip() for line in text.splitlines() if line.startswith("- ")]
    if not found:
        raise ValueError("no line starting with '- '")
    for template in found:
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}'")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"template {template!r} cannot be filled: {exc!r}") from None
    return found


def check_pool(templates: Sequence[str], source: str) -> list[str]:
    """The initial pool, without repeats; every template must hold "{}" and fill with ``.format``."""
    pool = list(dict.fromkeys(t.strip() for t in templates if t.strip()))
    if not pool:
        raise ZsclipError(f"{source}: the initial template pool is empty; give a file with one template per line")
    for i, t in enumerate(pool):
        if "{}" not in t:
            raise ZsclipError(f"{source}: template {i + 1} {t!r} has no '{{}}' where the class name goes")
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError):
            raise ZsclipError(f"{source}: template {i + 1} {t!r} cannot be filled (only one '{{}}', no other "
                              "braces)") from None
    return pool


def _request_seed(seed: int, restart: int, iteration: int, attempt: int) -> int:
    digest = hashlib.sha256(f"hillclimb:{seed}:{restart}:{iteration}:{attempt}".encode()).hexdigest()
    return int(digest[:8], 16)


class HillClimb:
    """The hill-climbing search as a step machine: step 0 scores the initial pool, then one step per
    iteration of each climb."""

    kind = "hillclimb"

    def __init__(self, pool: Sequence[str], evaluator: TemplateSetEvaluator, blocks_for, *, domain: str = "object",
                 k: int = 3, per_call: int = 1, iterations: int = 10, restarts: int = 0, feedback: str = "good+bad",
                 show_scores: bool = False, temperature: float = 1.0, seed: int = 1,
                 meta_prompt: str | Path | None = None) -> None:
        if feedback not in FEEDBACK_MODES:
            raise ZsclipError(f"--feedback must be one of {', '.join(FEEDBACK_MODES)}, got {feedback!r}")
        if k < 1 or per_call < 1 or iterations < 0 or restarts < 0:
            raise ZsclipError("k and --per-call must be at least 1, --iterations and --restarts at least 0")
        self.pool = list(pool)
        self.evaluator = evaluator
        self.blocks_for = blocks_for
        self.domain = domain
        self.k = k
        self.per_call = per_call
        self.iterations = iterations
        self.restarts = restarts
        self.feedback = feedback
        self.show_scores = show_scores
        self.temperature = temperature
        self.seed = seed
        path = Path(meta_prompt).expanduser() if meta_prompt else meta_prompt_path("hillclimb.txt")
        self.meta_prompt = read_meta_prompt(path, required=("feedback", "count"))
        self.meta_path = path

    # -- the step machine ---------------------------------------------------------------------------------

    def initial_state(self) -> dict[str, Any]:
        return {"entries": [], "climb": 0, "iteration": 0, "scored_pool": False, "failed_iterations": 0,
                "rejected_replies": 0, "rng": new_rng_state(self.seed)}

    def total_steps(self) -> int:
        return 1 + (self.restarts + 1) * self.iterations

    def finished(self, state: dict[str, Any]) -> bool:
        return state["scored_pool"] and state["climb"] > self.restarts

    def best_fitness(self, state: dict[str, Any]) -> float | None:
        return max((e["fitness"] for e in state["entries"]), default=None)

    def _score(self, templates: Sequence[str], ctx: StepContext) -> list[Terms]:
        ctx.reserve(len(templates))
        missing = [t for t in templates if t not in self.evaluator]
        if missing:
            for t, block in self.blocks_for(missing).items():
                self.evaluator.add(t, block)
        return [self.evaluator.evaluate([t]) for t in templates]

    def step(self, state: dict[str, Any], ctx: StepContext) -> list[dict[str, Any]]:
        if not state["scored_pool"]:
            rows = []
            for t, terms in zip(self.pool, self._score(self.pool, ctx)):
                state["entries"].append({"template": t, "climb": -1, "iteration": -1, **terms.row()})
                rows.append({"stage": "pool", "operator": "initial", "candidate": t, **terms.row()})
            state["scored_pool"] = True
            if self.iterations == 0:
                state["climb"] = self.restarts + 1
            return rows
        climb, iteration = state["climb"], state["iteration"]
        prompt = self.build_prompt(state)
        proposals, text = None, ""
        for attempt in range(MAX_ASKS):
            text = ctx.llm.complete(prompt, sample=attempt, temperature=self.temperature,
                                    seed=_request_seed(self.seed, climb, iteration, attempt)).text
            try:
                proposals = parse_templates(text)
                break
            except ValueError as exc:
                state["rejected_replies"] += 1
                logger.info("climb %d iteration %d: reply %d rejected (%s)", climb, iteration, attempt + 1, exc)
        rows: list[dict[str, Any]] = []
        if proposals is None:
            state["failed_iterations"] += 1
            logger.warning("climb %d iteration %d: %d replies, none valid (last: %r); nothing added", climb,
                           iteration, MAX_ASKS, text[:200])
        else:
            seen = {e["template"] for e in state["entries"]}
            fresh = [t for t in dict.fromkeys(proposals[: self.per_call]) if t not in seen]
            for t, terms in zip(fresh, self._score(fresh, ctx)):
                state["entries"].append({"template": t, "climb": climb, "iteration": iteration, **terms.row()})
                rows.append({"stage": f"climb {climb}", "operator": "llm", "candidate": t, **terms.row()})
        state["iteration"] += 1
        if state["iteration"] >= self.iterations:
            state["climb"] += 1
            state["iteration"] = 0
        return rows

    # -- the meta-prompt ----------------------------------------------------------------------------------

    def ranked(self, state: dict[str, Any], climb: int | None = None) -> list[dict[str, Any]]:
        """Entries of the initial pool and of ``climb`` (all climbs: ``None``), best first (stable)."""
        entries = [e for e in state["entries"] if climb is None or e["climb"] in (-1, climb)]
        return sorted(entries, key=lambda e: -e["fitness"])

    def _lines(self, entries: Sequence[dict[str, Any]]) -> str:
        if self.show_scores:
            return "\n".join(f"- {e['template']} (score {e['fitness']:.2f})" for e in entries)
        return "\n".join(f"- {e['template']}" for e in entries)

    def build_prompt(self, state: dict[str, Any]) -> str:
        """The meta-prompt of the current iteration (the feedback mode decides what it shows)."""
        ranked = self.ranked(state, state["climb"])
        k = min(self.k, len(ranked))
        if self.feedback == "none":
            rng = rng_from(state["rng"])
            picks = sorted(rng.choice(len(ranked), size=k, replace=False).tolist())
            state["rng"] = rng.bit_generator.state
            block = f"{NEUTRAL_HEADING}\n{self._lines([ranked[i] for i in picks])}"
        else:
            block = f"{GOOD_HEADING}\n{self._lines(ranked[:k])}"
            if self.feedback == "good+bad":
                block += f"\n\n{BAD_HEADING}\n{self._lines(list(reversed(ranked[-k:])))}"
        return fill(self.meta_prompt.strip(), feedback=block, count=str(self.per_call), domain=self.domain)

    def finalists(self, state: dict[str, Any], count: int) -> list[str]:
        """The ``count`` best templates by fitness over every climb."""
        return [e["template"] for e in self.ranked(state)[:count]]
