"""Resumable search jobs: fingerprinted parameters, a state saved after every step, a candidate log, budgets.

A job folder (``--job-dir``, default ``$ZSCLIP_HOME/jobs/<kind>-<fingerprint>``) holds:

    params.json          the kind and the parameters that define the job (their hash is the fingerprint)
    state.json           where the search stands: step, counters, the algorithm's state, the RNG state
    candidates/          the candidate log: one parquet file per step (step, candidate, each fitness term)
    result.json          written when the search ends (what it found, the validation choice, the test record)

A step is a pure function of the saved state: it works on a copy and is committed by writing its log
file and then ``state.json``, each atomically. A job killed at any moment (Ctrl-C, ``kill -9``) therefore
restarts from its last whole step and, with LLM replies coming from the LLM cache and the random state
restored, ends with the same result as a run that was never interrupted. A step that would pass a budget
(``max_evals``, ``max_calls``, ``max_cost``) is not started (LLM budgets: abandoned when the call that would
pass them is refused): the job stops with its state saved, and running it again with a larger budget
continues it. The candidate log only ever holds fitness numbers on the fitting split, never test numbers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._io import atomic_path, read_json, write_json_atomic
from ..errors import ZsclipError
from ..paths import cache_root

logger = logging.getLogger(__name__)

PARAMS = "params.json"
STATE = "state.json"
RESULT = "result.json"
LOG_DIR = "candidates"
JOB_FORMAT = 1


class JobMismatchError(ZsclipError):
    """A job folder was made by a job with other parameters."""


class BudgetReached(ZsclipError):
    """A budget stopped the job cleanly; the message says how far it got and how to continue."""


class EvalBudgetExceeded(Exception):
    """Raised inside a step when its evaluations would pass ``max_evals`` (the step is abandoned)."""


def fingerprint(kind: str, params: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of the canonical JSON of ``kind`` and ``params``."""
    canonical = json.dumps({"kind": kind, "params": params}, sort_keys=True, ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def text_fingerprint(texts: Sequence[str]) -> str:
    """A short hash of a list of texts (a template pool, a meta-prompt), for job parameters."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def default_job_dir(kind: str, fp: str) -> Path:
    """``$ZSCLIP_HOME/jobs/<kind>-<fingerprint>``."""
    return cache_root() / "jobs" / f"{kind}-{fp}"


@dataclass(frozen=True)
class Budget:
    """Limits of one job over its whole life (resumes included); ``None`` is no limit."""

    max_evals: int | None = None
    max_calls: int | None = None
    max_cost: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_evals", "max_calls", "max_cost"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ZsclipError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")


def new_rng_state(seed: int) -> dict[str, Any]:
    """The JSON-able state of a fresh numpy PCG64 generator seeded with ``seed``."""
    return np.random.default_rng(seed).bit_generator.state


def rng_from(state: Mapping[str, Any]) -> np.random.Generator:
    """A numpy generator restored from a saved ``bit_generator.state``."""
    rng = np.random.default_rng()
    rng.bit_generator.state = copy.deepcopy(dict(state))
    return rng


class Job:
    """One job folder: its parameters, its saved state and its candidate log (see the module docstring)."""

    def __init__(self, path: Path, kind: str, params: dict[str, Any]) -> None:
        self.path = path
        self.kind = kind
        self.params = params
        self.fingerprint = fingerprint(kind, params)

    @classmethod
    def open(cls, kind: str, params: Mapping[str, Any], job_dir: str | Path | None = None) -> Job:
        """Create the job folder, or reopen it when it was made with the same kind and parameters.

        A folder made with other parameters is refused with a message naming each one that differs.
        """
        params = json.loads(json.dumps(params))  # JSON-normalised: what is compared is what is stored
        fp = fingerprint(kind, params)
        path = Path(job_dir).expanduser() if job_dir else default_job_dir(kind, fp)
        stored_path = path / PARAMS
        if stored_path.exists():
            stored = read_json(stored_path, "job parameters")
            if stored.get("kind") != kind or stored.get("params") != params:
                raise JobMismatchError(_mismatch_message(path, kind, params, stored))
        else:
            if path.exists() and any(path.iterdir()):
                raise JobMismatchError(f"{path} is not empty and holds no {PARAMS}: it is not a zsclip job "
                                       "folder; pass another --job-dir")
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(stored_path, {"format": JOB_FORMAT, "kind": kind, "fingerprint": fp,
                                            "params": params, "created": time.time()})
        return cls(path, kind, params)

    def load_state(self) -> dict[str, Any] | None:
        """The last committed state, or ``None`` for a job that has not saved one yet."""
        path = self.path / STATE
        return read_json(path, "job state") if path.exists() else None

    def save_state(self, state: Mapping[str, Any]) -> None:
        """Write ``state.json`` atomically."""
        write_json_atomic(self.path / STATE, dict(state))

    def commit(self, state: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
        """Commit one step: its candidate rows (one parquet file for ``state["step"]``), then the state."""
        if rows:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([{"step": int(state["step"]), **row} for row in rows])
            with atomic_path(self.path / LOG_DIR / f"step-{int(state['step']):06d}.parquet") as tmp:
                pq.write_table(table, tmp)
        self.save_state(state)

    def drop_uncommitted(self, step: int) -> None:
        """Remove log files of steps after ``step`` (written by a step whose state was never saved)."""
        for path in sorted((self.path / LOG_DIR).glob("step-*.parquet")):
            if int(path.stem.split("-")[1]) > step:
                path.unlink()

    def candidates(self) -> list[dict[str, Any]]:
        """Every logged candidate, in step order, as dicts."""
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        for path in sorted((self.path / LOG_DIR).glob("step-*.parquet")):
            rows.extend(pq.read_table(path).to_pylist())
        return rows

    def write_result(self, result: Mapping[str, Any]) -> None:
        """Write ``result.json`` atomically."""
        write_json_atomic(self.path / RESULT, dict(result))

    def result(self) -> dict[str, Any] | None:
        """The finished job's ``result.json``, or ``None``."""
        path = self.path / RESULT
        return read_json(path, "job result") if path.exists() else None


def _mismatch_message(path: Path, kind: str, params: Mapping[str, Any], stored: Mapping[str, Any]) -> str:
    if stored.get("kind") != kind:
        return (f"job folder {path} holds a {stored.get('kind')!r} job, not {kind!r}; pass another --job-dir "
                "(or leave it out for a folder of its own)")
    old = stored.get("params") or {}
    lines = []
    for name in sorted(set(old) | set(params)):
        if old.get(name) != params.get(name):
            lines.append(f"  {name}: folder has {_short(old.get(name))}, this run has {_short(params.get(name))}")
    return (f"job folder {path} was made with other parameters ({len(lines)} differ):\n" + "\n".join(lines)
            + "\nRun with the folder's parameters to resume it, or pass another --job-dir for a new job.")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


# -- running a search step by step ----------------------------------------------------------------------


class StepContext:
    """What a step may spend: evaluations (``reserve`` before evaluating) and the job's LLM client."""

    def __init__(self, evals_left: int | None, llm: Any = None) -> None:
        self.evals_left = evals_left
        self.evals = 0
        self.llm = llm

    def reserve(self, n: int) -> None:
        """Claim ``n`` evaluations, or raise ``EvalBudgetExceeded`` (the step is abandoned, nothing spent)."""
        if self.evals_left is not None and self.evals + n > self.evals_left:
            raise EvalBudgetExceeded(f"{n} more evaluations would pass --max-evals")
        self.evals += n


class Search(Protocol):
    """A search as a step machine: the runner saves its state after every step."""

    kind: str

    def initial_state(self) -> dict[str, Any]:
        """The algorithm's state before the first step (JSON-able)."""

    def step(self, state: dict[str, Any], ctx: StepContext) -> list[dict[str, Any]]:
        """Advance ``state`` (a copy, changed in place) by one step; return the candidate rows it evaluated."""

    def finished(self, state: dict[str, Any]) -> bool:
        """Whether the search has no step left."""

    def total_steps(self) -> int:
        """How many steps the whole search takes (for the progress bar)."""

    def best_fitness(self, state: dict[str, Any]) -> float | None:
        """The best fitness found so far (``None`` before any evaluation)."""


@dataclass
class RunOutcome:
    """How a ``run_search`` call ended: ``finished`` or stopped by a budget (``stopped`` holds why)."""

    state: dict[str, Any]
    finished: bool
    stopped: str | None = None
    new_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _llm_counters(llm: Any) -> dict[str, float]:
    if llm is None:
        return {"calls": 0, "cached": 0, "cost_usd": 0.0}
    acc = llm.accounting.as_dict()
    return {"calls": acc["calls"], "cached": acc["cached"], "cost_usd": acc["cost_usd"]}


def run_search(job: Job, search: Search, budget: Budget, llm: Any = None, *,
               on_step: Callable[[dict[str, Any]], None] | None = None) -> RunOutcome:
    """Run ``search`` in ``job`` from its saved state until it finishes or a budget stops it.

    The job-level counters (``evals``, ``llm_calls``, ``llm_cached``, ``llm_cost``, the best-fitness
    history) live in the state beside the algorithm's own ``algo`` state. An LLM client's own budget is
    set here to what the job has left. Ctrl-C leaves the last committed state in place.
    """
    from ..llm import BudgetExceeded

    state = job.load_state()
    if state is None:
        state = {"step": 0, "status": "running", "evals": 0, "llm_calls": 0, "llm_cached": 0, "llm_cost": 0.0,
                 "history": [], "algo": search.initial_state()}
        job.drop_uncommitted(0)
        job.save_state(state)
    else:
        job.drop_uncommitted(int(state["step"]))
    if llm is not None:
        llm.max_calls = None if budget.max_calls is None else max(0, budget.max_calls - int(state["llm_calls"]))
        llm.max_cost = None if budget.max_cost is None else max(0.0, budget.max_cost - float(state["llm_cost"]))
    outcome = RunOutcome(state, finished=search.finished(state["algo"]))
    from ..progress import search_progress

    with search_progress(f"{search.kind}", search.total_steps()) as show:
        show(state)
        while not search.finished(state["algo"]):
            if budget.max_evals is not None and state["evals"] >= budget.max_evals:
                outcome.stopped = f"--max-evals {budget.max_evals} reached ({state['evals']} evaluations)"
                break
            work = copy.deepcopy(state)
            evals_left = None if budget.max_evals is None else budget.max_evals - state["evals"]
            ctx = StepContext(evals_left, llm)
            before = _llm_counters(llm)
            try:
                rows = search.step(work["algo"], ctx)
            except (EvalBudgetExceeded, BudgetExceeded) as exc:
                _add_llm(state, before, _llm_counters(llm))
                state["status"] = "stopped"
                job.save_state(state)
                outcome.stopped = (f"--max-evals {budget.max_evals}: the next step needs more evaluations than "
                                   f"are left ({state['evals']} done)" if isinstance(exc, EvalBudgetExceeded)
                                   else str(exc).split(";")[0])
                break
            except KeyboardInterrupt:
                _add_llm(state, before, _llm_counters(llm))
                state["status"] = "interrupted"
                job.save_state(state)
                raise
            _add_llm(work, before, _llm_counters(llm))
            work["step"] += 1
            work["evals"] += ctx.evals
            best = search.best_fitness(work["algo"])
            if best is not None and ctx.evals:
                work["history"].append([work["evals"], best])
            work["status"] = "done" if search.finished(work["algo"]) else "running"
            job.commit(work, rows)
            state = work
            outcome.new_steps += 1
            show(state)
            if on_step is not None:
                on_step(state)
    outcome.state = state
    outcome.finished = search.finished(state["algo"])
    if outcome.finished and state["status"] != "done":
        state["status"] = "done"
        job.save_state(state)
    return outcome


def _add_llm(state: dict[str, Any], before: Mapping[str, float], after: Mapping[str, float]) -> None:
    state["llm_calls"] += int(after["calls"] - before["calls"])
    state["llm_cached"] += int(after["cached"] - before["cached"])
    state["llm_cost"] += float(after["cost_usd"] - before["cost_usd"])


def stop_message(job: Job, outcome: RunOutcome, command_hint: str = "the same command") -> str:
    """What to tell a user whose job a budget stopped: how far it got and how to continue."""
    s = outcome.state
    return (f"job stopped by its budget: {outcome.stopped}. State saved in {job.path} (step {s['step']}, "
            f"{s['evals']} evaluations, {s['llm_calls']} LLM calls, est. ${s['llm_cost']:.4f}). Run {command_hint} "
            "again with a larger --max-evals / --max-calls / --max-cost to continue.")


def job_status(path: str | Path) -> dict[str, Any]:
    """Where the job in ``path`` stands: kind, fingerprint, status, step, counters, best fitness, result."""
    path = Path(path).expanduser()
    if not (path / PARAMS).exists():
        raise ZsclipError(f"{path} is not a zsclip search job folder (no {PARAMS}); jobs live under "
                          f"{cache_root() / 'jobs'} unless --job-dir was given")
    params = read_json(path / PARAMS, "job parameters")
    state = read_json(path / STATE, "job state") if (path / STATE).exists() else None
    result = read_json(path / RESULT, "job result") if (path / RESULT).exists() else None
    logged = len(list((path / LOG_DIR).glob("step-*.parquet")))
    info: dict[str, Any] = {"path": str(path), "kind": params.get("kind"), "fingerprint": params.get("fingerprint"),
                            "status": state["status"] if state else "new", "step": state["step"] if state else 0,
                            "evaluations": state["evals"] if state else 0,
                            "llm_calls": state["llm_calls"] if state else 0,
                            "llm_cached": state["llm_cached"] if state else 0,
                            "llm_cost_usd": state["llm_cost"] if state else 0.0,
                            "best_fitness": state["history"][-1][1] if state and state["history"] else None,
                            "logged_steps": logged, "params": params.get("params")}
    if result is not None:
        info["result"] = {k: result[k] for k in ("outputs", "chosen", "validation", "test") if k in result}
    return info
