"""The LLM client every LLM-driven method uses: OpenAI-compatible chat completions, cached, retried, budgeted.

Only the plain ``/chat/completions`` endpoint is used, through the ``openai`` client, so the same code talks
to OpenAI and to local servers (vLLM, llama.cpp, Ollama). Model, base URL and key come from arguments or
the environment (``ZSCLIP_LLM_MODEL``, ``ZSCLIP_LLM_BASE_URL``, ``ZSCLIP_LLM_API_KEY``, falling back to
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``).

A client says once which server it contacts (INFO), and each retry as one WARNING line. A server that
refuses the connection before it ever answered this client is reported at once: retries are for flaky
servers, not for absent ones. Replies larger than ``max_reply_bytes`` are errors for their request (never
cached); the token usage a server reports is checked and clamped (it decides the cost); with ``max_cost``
each request reserves its estimated cost before it is sent, so concurrent requests cannot overrun the
budget. Ctrl-C during ``complete_many`` stops at once: no request is sent after it, the replies that
arrived are in the cache, and the requests in flight are abandoned.

Every reply is kept in a SQLite cache (``CACHE/llm-cache.sqlite``, WAL mode, safe for concurrent writers)
keyed by a hash of the model, the messages, the sampling parameters and a sample index, so a repeated job
makes no calls and runs with the server unreachable; an interrupted or budget-stopped job resumes where it
stopped. The API key and the server address are never stored.

    >>> llm = LLMClient("gpt-4o-mini", max_calls=500)
    >>> results = llm.complete_many(prompts, parse=parse_bullets)
    >>> [r.value for r in results if r.ok], llm.accounting.summary()
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from ._io import read_json, sqlite_connection
from .errors import ZsclipError
from .paths import cache_root, resource_dir
from .progress import progress_bar

logger = logging.getLogger(__name__)

T = TypeVar("T")
Prompt = str | Sequence[Mapping[str, Any]]

ENV_MODEL = "ZSCLIP_LLM_MODEL"
ENV_BASE_URL = "ZSCLIP_LLM_BASE_URL"
ENV_API_KEY = "ZSCLIP_LLM_API_KEY"
ENV_PRICES = "ZSCLIP_LLM_PRICES"
#: Sent when no key is configured: local servers ignore it, and the openai client refuses to run without one.
NO_KEY = "EMPTY"
#: HTTP statuses worth retrying: request timeout, conflict, rate limit and every server-side error.
RETRYABLE_STATUSES = frozenset({408, 409, 429, *range(500, 600)})
#: Statuses that concern one request's content (too long, refused), not the server: a job records the
#: item as failed and goes on with the others.
ITEM_STATUSES = frozenset({400, 413, 422})
#: Sampling parameters compared as floats in the cache key, so ``temperature=0`` and ``0.0`` are one request.
_FLOAT_PARAMS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})
_CACHE_FORMAT = 1
#: the largest reply accepted by default (a chat completion is a few kB; 1 MB is already absurd)
DEFAULT_MAX_REPLY_BYTES = 1_000_000
#: completion tokens assumed for a request without ``max_tokens`` before any reply was seen (budget estimate)
DEFAULT_COMPLETION_ESTIMATE = 256
#: no request is billed more tokens than this, whatever the server says
MAX_TOKENS_PER_REQUEST = 1_000_000


class LLMError(ZsclipError):
    """An LLM request failed for good: the server, model and last status say where and why."""

    def __init__(self, message: str, *, server: str = "", model: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.server = server
        self.model = model
        self.status = status


class LLMParseError(LLMError):
    """Every reply to one request failed the caller's parse function; ``text`` is the last reply."""

    def __init__(self, message: str, *, text: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.text = text


class ReplyTooLarge(LLMError):
    """A reply passed the client's ``max_reply_bytes``: an error for that request, never a cache entry."""


class BudgetExceeded(ZsclipError):
    """The next call would pass the job's ``max_calls`` or ``max_cost``; answers so far are cached."""


def as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """Chat messages for ``prompt``: a string becomes one user message, a message list is copied as is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt]
    for i, message in enumerate(messages):
        if "role" not in message or "content" not in message:
            raise ZsclipError(f"LLM message {i} has no 'role' or 'content': {message!r}; give each message both")
    return messages


def request_key(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], sample: int) -> str:
    """The cache key of one request: SHA-256 of the canonical JSON of model, messages, parameters, sample.

    ``params`` are the sampling parameters actually sent (``None`` values dropped, float parameters as
    floats); the sample index tells apart repeated asks of the same request. Server and key are not part
    of it: the same model answers the same way wherever it is served from.
    """
    payload = {"format": _CACHE_FORMAT, "model": model, "messages": list(messages), "params": dict(params),
               "sample": sample}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _sampling_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters sent to the server, normalised so equal requests get equal cache keys."""
    out: dict[str, Any] = {}
    for name, value in sorted(params.items()):
        if value is None:
            continue
        if name in _FLOAT_PARAMS and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Completion:
    """One reply: its text, token usage, and whether it came from the cache."""

    text: str
    model: str
    sample: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


@dataclass(frozen=True)
class LLMResult(Generic[T]):
    """The outcome of one item of a job: ``value`` when it succeeded, else ``error`` says why.

    ``text`` is the last reply received (the unparseable one for a parse failure); ``attempts`` counts
    the asks made for this item, re-asks included.
    """

    value: T | None = None
    error: str | None = None
    text: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """Whether the item produced a value."""
        return self.error is None


# ---------------------------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    """USD per one million input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost in USD of one call with these token counts."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


def default_prices_path() -> Path:
    """``$ZSCLIP_LLM_PRICES`` when set, else the ``prompts/llm_prices.json`` shipped with zsclip."""
    env = os.environ.get(ENV_PRICES)
    return Path(env).expanduser() if env else resource_dir("prompts") / "llm_prices.json"


def load_prices(path: str | Path | None = None) -> dict[str, Price]:
    """Read a price table: ``{"models": {name: {"input": usd_per_1m, "output": usd_per_1m}}}``."""
    path = Path(path) if path else default_prices_path()
    data = read_json(path, "LLM price table")
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ZsclipError(f"LLM price table {path} needs a 'models' object mapping model names to prices")
    prices: dict[str, Price] = {}
    for name, entry in models.items():
        values = [entry.get(k) if isinstance(entry, dict) else None for k in ("input", "output")]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ZsclipError(f"LLM price table {path}: models.{name} must be {{\"input\": USD, \"output\": USD}} "
                              f"per 1M tokens, non-negative numbers; got {entry!r}")
        prices[name] = Price(float(values[0]), float(values[1]))
    return prices


def price_for(prices: Mapping[str, Price], model: str) -> Price | None:
    """The price of ``model``: its exact entry, else the longest entry it extends with ``-`` or ``:``.

    So ``gpt-4o`` prices ``gpt-4o-2024-08-06`` and ``llama3`` prices ``llama3:8b``, while ``gpt-4`` does not
    price ``gpt-4o``.
    """
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith((name + "-", name + ":"))]
    return prices[max(matches, key=len)] if matches else None


# ------------------------------------------------------------------------------------------ accounting


@dataclass
class Accounting:
    """What a job cost: calls made, cache hits, tokens, estimated USD, retries, re-asks and failures.

    Shared by the threads of a job (updates take a lock); pass one object to several clients to account
    for them together. Tokens and cost count calls made, not cache hits (those were paid for before).
    """

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = 0
    waited_s: float = 0.0
    reasks: int = 0
    failures: int = 0
    unpriced_models: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens of the calls made."""
        return self.prompt_tokens + self.completion_tokens

    def summary(self) -> str:
        """One line, e.g. ``LLM: 12 calls, 30 cached, 4,210 tokens, est. $0.0031``."""
        line = (f"LLM: {self.calls:,} calls, {self.cached:,} cached, {self.tokens:,} tokens, "
                f"est. ${self.cost_usd:.4f}")
        if self.retries:
            line += f", {self.retries:,} retries"
        if self.failures:
            line += f", {self.failures:,} failed"
        if self.unpriced_models:
            line += f" (no price for {', '.join(sorted(self.unpriced_models))}: counted as $0)"
        return line

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict, for run records."""
        with self._lock:
            return {"calls": self.calls, "cached": self.cached, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd,
                    "retries": self.retries, "waited_s": self.waited_s, "reasks": self.reasks,
                    "failures": self.failures, "unpriced_models": sorted(self.unpriced_models)}

    def _add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


# ----------------------------------------------------------------------------------------------- cache


class LLMCache:
    """Replies on disk, one SQLite row per request key (WAL mode: several processes may write at once).

    A row holds the request (model, messages, parameters, sample: everything the key was made of) and the
    reply with its token usage, so the cache can be read back as provenance. No key, no server address.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else cache_root() / "llm-cache.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                       "request TEXT NOT NULL, text TEXT NOT NULL, finish_reason TEXT, "
                       "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL)")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection to the cache file; SQLite's errors become ``ZsclipError`` s naming the file."""
        try:
            with sqlite_connection(self.path) as db:
                yield db
        except sqlite3.OperationalError as exc:  # locked for too long, read-only, disk full
            raise ZsclipError(f"cannot use the LLM reply cache {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            files = " ".join(str(self.path) + suffix for suffix in ("", "-wal", "-shm"))
            raise ZsclipError(f"the LLM reply cache {self.path} is not a readable SQLite database ({exc}). Delete "
                              f"it to start an empty cache (`rm -f {files}`); the replies it held will be asked "
                              "for again") from None

    def get(self, key: str) -> Completion | None:
        """The stored reply for ``key`` (marked ``cached``), or ``None``."""
        with self._db() as db:
            row = db.execute("SELECT model, request, text, finish_reason, prompt_tokens, completion_tokens "
                             "FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        model, request, text, finish_reason, prompt_tokens, completion_tokens = row
        return Completion(text=text, model=model, sample=int(json.loads(request)["sample"]),
                          finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, cached=True)

    def put(self, key: str, request: Mapping[str, Any], reply: Completion) -> None:
        """Store (or replace, after a refresh) the reply to ``request``."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (key, reply.model, json.dumps(request, ensure_ascii=False, sort_keys=True), reply.text,
                        reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, time.time()))

    def __len__(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])


# ------------------------------------------------------------------------------------------------ retry


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried: ``max_retries`` more tries after the first.

    The wait before retry ``k`` (0-based) is the server's ``Retry-After`` when it sends one (capped at
    ``backoff_max``), else ``backoff_base · 2**k`` capped at ``backoff_max``, scaled by a random factor in
    [0.5, 1] so that parallel clients do not retry in lockstep.
    """

    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry``."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        return min(self.backoff_base * 2**retry, self.backoff_max) * random.uniform(0.5, 1.0)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (numeric forms only), or ``None``."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


class _MalformedReply(Exception):
    """The server answered 200 with something that is not a chat completion."""


class _TooLarge(Exception):
    """Raised from inside the HTTP client when a reply passes the size cap (``size`` bytes seen so far)."""

    def __init__(self, size: int, announced: bool) -> None:
        super().__init__(f"{size} bytes")
        self.size = size
        self.announced = announced


@functools.cache
def _capped_stream_class(httpx_module: str) -> type:
    """A response body stream of the HTTP library ``openai`` is built on (``httpx`` or ``httpx2``) that raises
    ``_TooLarge`` once more than ``limit`` bytes arrived."""
    httpx = importlib.import_module(httpx_module)

    class CappedStream(httpx.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, limit: int) -> None:
            self.inner = inner
            self.limit = limit

        def __iter__(self) -> Iterator[bytes]:
            size = 0
            for chunk in self.inner:
                size += len(chunk)
                if size > self.limit:
                    raise _TooLarge(size, announced=False)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    return CappedStream


def _size_cap(limit: int) -> Callable[[Any], None]:
    """An HTTP response hook that refuses a body over ``limit`` bytes: at once when ``Content-Length`` says
    so, else while the body is read. It runs before the body is read, so a huge reply is never held."""

    def hook(response: Any) -> None:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _TooLarge(int(length), announced=True)
        response.stream = _capped_stream_class(type(response).__module__.partition(".")[0])(response.stream, limit)

    return hook


def _prompt_estimate(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of ``messages`` by the usual rule of thumb (4 characters a token), for budget estimates."""
    return math.ceil(sum(len(str(m.get("content", ""))) for m in messages) / 4)


def _usage_count(value: Any, bound: int) -> int | None:
    """A token count reported by the server, clamped to ``[0, bound]``; ``None`` when it is not a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, bound)


# ----------------------------------------------------------------------------------------------- client


class LLMClient:
    """A cached, retried, budgeted chat-completions client for one model.

    ``cache`` is ``True`` (the default cache file), ``False`` (no cache) or a path. ``refresh=True`` skips
    reading the cache (replies are still written). ``max_calls`` / ``max_cost`` (USD, estimated from the
    price table) bound the calls this client makes: the call that would pass them raises
    ``BudgetExceeded`` instead of being made. ``prices`` is a price-table path or a ``{model: Price}``
    mapping (default: ``default_prices_path()``). ``concurrency`` is the number of requests
    ``complete_many`` keeps in flight. ``timeout`` (seconds) bounds each request, ``retry`` says how often
    and how patiently a failed one is tried again. A reply over ``max_reply_bytes`` is an error for its
    request. ``completion_estimate`` is the number of completion tokens the budget assumes for a request
    without ``max_tokens`` until replies show the real length.
    """

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, retry: RetryPolicy | None = None, concurrency: int = 4,
                 cache: bool | str | Path = True, refresh: bool = False, max_calls: int | None = None,
                 max_cost: float | None = None, prices: str | Path | Mapping[str, Price] | None = None,
                 accounting: Accounting | None = None, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
                 completion_estimate: int = DEFAULT_COMPLETION_ESTIMATE) -> None:
        import openai

        self.model = model or os.environ.get(ENV_MODEL) or ""
        if not self.model:
            raise LLMError(f"no LLM model given: pass model= or set {ENV_MODEL}")
        base_url = base_url or os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY") or NO_KEY
        if concurrency < 1:
            raise ZsclipError(f"LLM concurrency must be at least 1, got {concurrency}")
        if not timeout > 0:
            raise ZsclipError(f"the LLM timeout must be a positive number of seconds, got {timeout}")
        if retry is not None and retry.max_retries < 0:
            raise ZsclipError(f"the number of LLM retries must be 0 or more, got {retry.max_retries}")
        if max_reply_bytes < 1:
            raise ZsclipError(f"max_reply_bytes must be at least 1, got {max_reply_bytes}")
        self.max_reply_bytes = max_reply_bytes
        self.completion_estimate = completion_estimate
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.refresh = refresh
        self.max_calls = max_calls
        self.max_cost = max_cost
        self.accounting = accounting if accounting is not None else Accounting()
        self.cache = None if cache is False else LLMCache(None if cache is True else cache)
        table = prices if isinstance(prices, Mapping) else load_prices(prices)
        self.price = price_for(table, self.model)
        if self.price is None:
            with self.accounting._lock:
                self.accounting.unpriced_models.add(self.model)
            if max_cost is not None:
                logger.warning("no price for LLM model %s: max_cost=%s cannot stop this job", self.model, max_cost)
        http = openai.DefaultHttpxClient(timeout=timeout, headers={"Accept-Encoding": "identity"},  # cap = bytes
                                         event_hooks={"response": [_size_cap(max_reply_bytes)]})
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0,
                                     http_client=http)
        self.server = str(self._client.base_url).rstrip("/")
        self._budget_lock = threading.Lock()
        self._in_flight = 0  # requests sent and not yet answered
        self._retrying = 0  # requests waiting to be tried again
        self._reserved = 0.0  # estimated USD of the requests in flight
        self._contacted = False
        self._reached = False  # has the server ever answered this client (with anything)?
        self._job = threading.local()  # the worker's job cancel event (complete_many)

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, server={self.server!r})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ------------------------------------------------------------------------------------

    def complete(self, prompt: Prompt, *, sample: int = 0, refresh: bool | None = None, temperature: float = 0.0,
                 top_p: float | None = None, max_tokens: int | None = None, **params: Any) -> Completion:
        """The reply to ``prompt`` (a string or chat messages), from the cache when it holds one.

        ``sample`` numbers independent asks of the same request (each is cached on its own); other keyword
        arguments (``seed``, ``stop``, ...) are sent to the server and are part of the cache key.
        """
        messages = as_messages(prompt)
        sent = _sampling_params({"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, **params})
        key = request_key(self.model, messages, sent, sample)
        if self.cache is not None and not (self.refresh if refresh is None else refresh):
            hit = self.cache.get(key)
            if hit is not None:
                self.accounting._add(cached=1)
                return hit
        reply = self._call(messages, sent, sample)
        if self.cache is not None:
            self.cache.put(key, {"model": self.model, "messages": messages, "params": sent, "sample": sample}, reply)
        return reply

    def ask(self, prompt: Prompt, parse: Callable[[str], T] = str, *, max_parse_attempts: int = 3,
            **sampling: Any) -> T:
        """``parse(reply)``, asking again (next sample index) while ``parse`` raises ``ValueError``.

        After ``max_parse_attempts`` unparseable replies raises ``LLMParseError`` with the last reply.
        Because each ask has its own sample index, a cached bad reply is not replayed forever.
        """
        value, _ = self._ask(prompt, parse, max_parse_attempts, sampling)
        return value

    def _ask(self, prompt: Prompt, parse: Callable[[str], T], max_parse_attempts: int,
             sampling: Mapping[str, Any]) -> tuple[T, int]:
        """``ask``, also returning how many asks it took."""
        if max_parse_attempts < 1:
            raise ZsclipError(f"max_parse_attempts must be at least 1, got {max_parse_attempts}")
        problem, text = "", ""
        for attempt in range(max_parse_attempts):
            text = self.complete(prompt, sample=attempt, **sampling).text
            try:
                return parse(text), attempt + 1
            except ValueError as exc:
                problem = str(exc) or type(exc).__name__
                logger.info("LLM reply %d of %d did not parse (%s)", attempt + 1, max_parse_attempts, problem)
                if attempt + 1 < max_parse_attempts:
                    self.accounting._add(reasks=1)
        raise LLMParseError(f"LLM model {self.model} gave {max_parse_attempts} replies that did not parse; last "
                            f"problem: {problem}; last reply: {text[:200]!r}",
                            text=text, server=self.server, model=self.model)

    # -- many requests ----------------------------------------------------------------------------------

    def complete_many(self, prompts: Sequence[Prompt], parse: Callable[[str], T] = str, *,
                      max_parse_attempts: int = 3, **sampling: Any) -> list[LLMResult[T]]:
        """``ask`` each prompt, ``concurrency`` at a time; one ``LLMResult`` per prompt, in order.

        An item whose replies never parse, whose reply is too large, or that the server refuses as a bad
        request (400/413/422), is recorded as failed and the others go on. ``BudgetExceeded`` and errors of
        the server itself (unreachable, retries exhausted, bad key) stop the job: no new item starts, the
        ones in flight finish into the cache, and the error is raised, so running the job again resumes it.
        ``KeyboardInterrupt`` (Ctrl-C) stops it at once: nothing more is sent, not even a retry, the requests
        in flight are abandoned (the worker threads are daemons, so the process can exit), and the
        interrupt is raised again after one line saying what was kept.
        """
        results: list[LLMResult[T] | None] = [None] * len(prompts)
        errors: list[BaseException] = []
        stop, cancel = threading.Event(), threading.Event()
        state = {"next": 0, "done": 0, "workers": min(self.concurrency, len(prompts))}
        changed = threading.Condition()

        def run(i: int) -> None:
            try:
                value, attempts = self._ask(prompts[i], parse, max_parse_attempts, sampling)
            except LLMParseError as exc:
                results[i] = LLMResult(error=str(exc), text=exc.text, attempts=max_parse_attempts)
            except LLMError as exc:
                if exc.status not in ITEM_STATUSES and not isinstance(exc, ReplyTooLarge):
                    raise
                results[i] = LLMResult(error=str(exc), attempts=1)
            else:
                results[i] = LLMResult(value=value, attempts=attempts)
                return
            self.accounting._add(failures=1)
            logger.warning("LLM item %d failed: %s", i, results[i].error)

        def worker() -> None:
            self._job.cancel = cancel
            try:
                while True:
                    with changed:
                        if stop.is_set() or state["next"] >= len(prompts):
                            return
                        i = state["next"]
                        state["next"] += 1
                    try:
                        run(i)
                    except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                        with changed:
                            errors.append(exc)
                        stop.set()
                    finally:
                        with changed:
                            state["done"] += 1
                            changed.notify_all()
            finally:
                with changed:
                    state["workers"] -= 1
                    changed.notify_all()

        def status() -> str:
            waiting = len(prompts) - state["next"] if not stop.is_set() else 0
            return f"{self._in_flight} in flight, {waiting + self._retrying} waiting"

        with progress_bar(f"LLM {self.model}", total=len(prompts)) as advance:
            for _ in range(state["workers"]):
                threading.Thread(target=worker, daemon=True, name="zsclip-llm").start()
            shown = 0
            try:
                with changed:
                    while state["workers"]:
                        changed.wait(timeout=0.5)
                        advance(state["done"] - shown, status=status())
                        shown = state["done"]
            except KeyboardInterrupt:
                cancel.set()
                stop.set()
                finished = sum(r is not None for r in results)
                logger.warning("LLM job interrupted: %d of %d requests had finished (their replies are cached: run "
                               "the job again to resume); %d in flight abandoned, nothing more is sent",
                               finished, len(prompts), self._in_flight)
                raise
            advance(state["done"] - shown, status=status())
        logger.info(self.accounting.summary())
        if errors:
            raise errors[0]
        return cast(list[LLMResult[T]], results)  # every item ran: a stop always comes with an error

    # -- the HTTP call with retries and budget ----------------------------------------------------------

    def _estimate(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> float:
        """The cost in USD a request is expected to have, reserved against ``max_cost`` before it is sent:
        its prompt by length, its completion ``max_tokens`` long, else as long as the replies so far were
        on average, else ``completion_estimate``."""
        if self.price is None:
            return 0.0
        acc = self.accounting
        completion = params.get("max_tokens")
        if not isinstance(completion, int) or completion < 0:
            completion = round(acc.completion_tokens / acc.calls) if acc.calls else self.completion_estimate
        return self.price.cost(_prompt_estimate(messages), completion)

    @contextlib.contextmanager
    def _call_slot(self, estimate: float) -> Iterator[None]:
        """Hold one in-flight call and its estimated cost against the budget; ``BudgetExceeded`` if it would
        pass it."""
        acc = self.accounting
        with self._budget_lock:
            if self.max_calls is not None and acc.calls + self._in_flight >= self.max_calls:
                in_flight = f", {self._in_flight} more in flight" if self._in_flight else ""
                raise BudgetExceeded(f"LLM budget reached: max_calls={self.max_calls}, {acc.calls} calls made"
                                     f"{in_flight} ({acc.summary()}); the answers so far are cached: run the job "
                                     "again, with a larger budget, to resume")
            if self.max_cost is not None:
                projected = acc.cost_usd + self._reserved + estimate
                if projected > self.max_cost:
                    reserved = f" with ${self._reserved:.4f} reserved by calls in flight" if self._reserved else ""
                    raise BudgetExceeded(f"LLM budget reached: the next call (est. ${estimate:.4f}) would bring the "
                                         f"estimated cost to ${projected:.4f}{reserved}, over max_cost="
                                         f"${self.max_cost} ({acc.summary()}); the answers so far are cached: run "
                                         "the job again to resume")
            self._in_flight += 1
            self._reserved += estimate
        try:
            yield
        finally:
            with self._budget_lock:
                self._in_flight -= 1
                self._reserved = max(0.0, self._reserved - estimate)

    def _cancelled(self) -> bool:
        cancel = getattr(self._job, "cancel", None)
        return cancel is not None and cancel.is_set()

    def _call(self, messages: list[dict[str, Any]], params: Mapping[str, Any], sample: int) -> Completion:
        """One completion from the server, retried on rate limits, server errors, timeouts, broken replies."""
        import openai

        if not self._contacted:
            self._contacted = True
            logger.info("contacting LLM server %s (model %s)", self.server, self.model)
        last, status = "", None
        attempts = self.retry.max_retries + 1
        estimate = self._estimate(messages, params)
        for attempt in range(attempts):
            if self._cancelled():
                raise KeyboardInterrupt
            retry_after = None
            with self._call_slot(estimate):
                try:
                    response = self._client.chat.completions.create(model=self.model, messages=messages, **params)
                    self._reached = True
                    reply = self._read(response, sample, messages, params)
                except openai.APIStatusError as exc:
                    self._reached = True
                    status = exc.status_code
                    last = f"HTTP {status}: {exc.message.removeprefix(f'Error code: {status} - ')}"
                    if status not in RETRYABLE_STATUSES:
                        raise LLMError(f"LLM server {self.server} refused the request for model {self.model}: "
                                       f"{last}{_hint(status)}", server=self.server, model=self.model,
                                       status=status) from None
                    retry_after = _retry_after(exc.response.headers)
                except _TooLarge as exc:
                    self._reached = True
                    raise ReplyTooLarge(
                        f"LLM server {self.server} (model {self.model}) sent a reply larger than the "
                        f"{self.max_reply_bytes:,}-byte cap ({'announced ' if exc.announced else 'over '}"
                        f"{exc.size:,} bytes); it is not kept. Raise max_reply_bytes if such replies are expected",
                        server=self.server, model=self.model) from None
                except openai.APITimeoutError as exc:
                    status, last = None, f"no reply within the {self.timeout:g} s timeout"
                    if not self._reached and type(exc.__cause__).__name__ == "ConnectTimeout":
                        raise self._unreachable(f"connection error (no connection within {self.timeout:g} s)") from None
                except openai.APIConnectionError as exc:
                    status, last = None, f"connection error ({exc.__cause__ or exc})"
                    if not self._reached and type(exc.__cause__).__name__ == "ConnectError":  # not a cut reply
                        raise self._unreachable(last) from None
                except (openai.APIResponseValidationError, json.JSONDecodeError, _MalformedReply) as exc:
                    self._reached = True
                    status, last = 200, f"malformed reply ({exc})"
                else:
                    cost = self.price.cost(reply.prompt_tokens, reply.completion_tokens) if self.price else 0.0
                    self.accounting._add(calls=1, prompt_tokens=reply.prompt_tokens,
                                         completion_tokens=reply.completion_tokens, cost_usd=cost)
                    return reply
            if attempt + 1 == attempts:
                break
            delay = self.retry.delay(attempt, retry_after)
            logger.warning("LLM server %s: %s; retry %d of %d in %.2f s", self.server, last, attempt + 1,
                           self.retry.max_retries, delay)
            self.accounting._add(retries=1, waited_s=delay)
            with self._budget_lock:
                self._retrying += 1
            try:
                cancel = getattr(self._job, "cancel", None)
                if cancel is not None:
                    cancel.wait(delay)
                else:
                    time.sleep(delay)
            finally:
                with self._budget_lock:
                    self._retrying -= 1
        raise LLMError(f"LLM server {self.server} (model {self.model}) failed {attempts} times; last: {last}",
                       server=self.server, model=self.model, status=status)

    def _unreachable(self, problem: str) -> LLMError:
        """The error for a server that could not be connected to and has never answered this client."""
        return LLMError(f"LLM server {self.server} (model {self.model}) is not reachable: {problem}. Is it running, "
                        f"and is the address right (--base-url, {ENV_BASE_URL})? Not retried: the server has not "
                        "answered once", server=self.server, model=self.model)

    def _read(self, response: Any, sample: int, messages: Sequence[Mapping[str, Any]],
              params: Mapping[str, Any]) -> Completion:
        """The ``Completion`` in a chat-completions response, or ``_MalformedReply`` / ``_TooLarge``.

        The token usage is the server's word, checked: a count that is not a non-negative integer is
        replaced by an estimate from the text's length, and no count passes what the request could have
        used (the prompt's UTF-8 bytes plus chat overhead; ``max_tokens``; ``MAX_TOKENS_PER_REQUEST``).
        """
        choices = getattr(response, "choices", None)
        if not choices:
            raise _MalformedReply(f"no choices in {str(response)[:200]!r}")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            raise _MalformedReply(f"no message text in choice {str(choices[0])[:200]!r}")
        if len(text.encode("utf-8")) > self.max_reply_bytes:  # a compressed reply passes the byte cap on the wire
            raise _TooLarge(len(text.encode("utf-8")), announced=False)
        usage = getattr(response, "usage", None)
        prompt_bound = sum(len(str(m.get("content", "")).encode("utf-8")) + 16 for m in messages) + 64
        max_tokens = params.get("max_tokens")
        completion_bound = max_tokens if isinstance(max_tokens, int) and max_tokens >= 0 else MAX_TOKENS_PER_REQUEST
        reported = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        prompt_tokens = _usage_count(reported[0], prompt_bound)
        completion_tokens = _usage_count(reported[1], completion_bound)
        if (prompt_tokens, completion_tokens) != reported and reported != (None, None):
            logger.warning("LLM server %s reported token usage %r, not believed: counted %s", self.server,
                           reported, "as estimated from the texts' length where it was not a count, and clamped")
        if prompt_tokens is None:
            prompt_tokens = _prompt_estimate(messages)
        if completion_tokens is None:
            completion_tokens = min(math.ceil(len(text) / 4), completion_bound)
        return Completion(text=text, model=self.model, sample=sample,
                          finish_reason=getattr(choices[0], "finish_reason", None),
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def _hint(status: int) -> str:
    """What to check for a status that retrying cannot fix."""
    if status in (401, 403):
        return f" (check the API key: {ENV_API_KEY} or OPENAI_API_KEY)"
    if status == 404:
        return f" (check the model name and the base URL, which usually ends in /v1: {ENV_BASE_URL})"
    return ""
