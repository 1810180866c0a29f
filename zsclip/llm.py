"""The LLM client every LLM-driven method uses: OpenAI-compatible chat completions, cached, retried, budgeted.

Only the plain ``/chat/completions`` endpoint is used, through the ``openai`` client, so the same code talks
to OpenAI and to local servers (vLLM, llama.cpp, Ollama). Model, base URL and key come from arguments or
the environment (``ZSCLIP_LLM_MODEL``, ``ZSCLIP_LLM_BASE_URL``, ``ZSCLIP_LLM_API_KEY``, falling back to
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``).

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
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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
        with sqlite_connection(self.path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                       "request TEXT NOT NULL, text TEXT NOT NULL, finish_reason TEXT, "
                       "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL)")

    def get(self, key: str) -> Completion | None:
        """The stored reply for ``key`` (marked ``cached``), or ``None``."""
        with sqlite_connection(self.path) as db:
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
        with sqlite_connection(self.path) as db:
            db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (key, reply.model, json.dumps(request, ensure_ascii=False, sort_keys=True), reply.text,
                        reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, time.time()))

    def __len__(self) -> int:
        with sqlite_connection(self.path) as db:
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


# ----------------------------------------------------------------------------------------------- client


class LLMClient:
    """A cached, retried, budgeted chat-completions client for one model.

    ``cache`` is ``True`` (the default cache file), ``False`` (no cache) or a path. ``refresh=True`` skips
    reading the cache (replies are still written). ``max_calls`` / ``max_cost`` (USD, estimated from the
    price table) bound the calls this client makes: the call that would pass them raises
    ``BudgetExceeded`` instead of being made. ``prices`` is a price-table path or a ``{model: Price}``
    mapping (default: ``default_prices_path()``). ``concurrency`` is the number of requests
    ``complete_many`` keeps in flight.
    """

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, retry: RetryPolicy | None = None, concurrency: int = 4,
                 cache: bool | str | Path = True, refresh: bool = False, max_calls: int | None = None,
                 max_cost: float | None = None, prices: str | Path | Mapping[str, Price] | None = None,
                 accounting: Accounting | None = None) -> None:
        import openai

        self.model = model or os.environ.get(ENV_MODEL) or ""
        if not self.model:
            raise LLMError(f"no LLM model given: pass model= or set {ENV_MODEL}")
        base_url = base_url or os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY") or NO_KEY
        if concurrency < 1:
            raise ZsclipError(f"LLM concurrency must be at least 1, got {concurrency}")
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
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self.server = str(self._client.base_url).rstrip("/")
        self._budget_lock = threading.Lock()
        self._in_flight = 0

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

        An item whose replies never parse, or that the server refuses as a bad request (400/413/422), is
        recorded as failed and the others go on. ``BudgetExceeded`` and errors of the server itself
        (unreachable, retries exhausted, bad key) stop the job: no new item starts, the ones in flight
        finish into the cache, and the error is raised, so running the job again resumes it.
        """
        results: list[LLMResult[T] | None] = [None] * len(prompts)
        stop = threading.Event()

        def run(i: int) -> None:
            if stop.is_set():
                return
            try:
                value, attempts = self._ask(prompts[i], parse, max_parse_attempts, sampling)
            except LLMParseError as exc:
                results[i] = LLMResult(error=str(exc), text=exc.text, attempts=max_parse_attempts)
            except LLMError as exc:
                if exc.status not in ITEM_STATUSES:
                    stop.set()
                    raise
                results[i] = LLMResult(error=str(exc), attempts=1)
            except BaseException:
                stop.set()
                raise
            else:
                results[i] = LLMResult(value=value, attempts=attempts)
                return
            self.accounting._add(failures=1)
            logger.warning("LLM item %d failed: %s", i, results[i].error)

        with progress_bar(f"LLM {self.model}", total=len(prompts)) as advance, \
                ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="zsclip-llm") as pool:
            futures = [pool.submit(run, i) for i in range(len(prompts))]
            for future in futures:
                future.add_done_callback(lambda _: advance(1))
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
        logger.info(self.accounting.summary())
        for future in futures:
            error = None if future.cancelled() else future.exception()
            if error is not None:
                raise error
        return cast(list[LLMResult[T]], results)  # every item ran: a stop always comes with an error

    # -- the HTTP call with retries and budget ----------------------------------------------------------

    @contextlib.contextmanager
    def _call_slot(self) -> Iterator[None]:
        """Hold one in-flight call against the budget; raise ``BudgetExceeded`` if it would pass it."""
        acc = self.accounting
        with self._budget_lock:
            if self.max_calls is not None and acc.calls + self._in_flight >= self.max_calls:
                in_flight = f", {self._in_flight} more in flight" if self._in_flight else ""
                raise BudgetExceeded(f"LLM budget reached: max_calls={self.max_calls}, {acc.calls} calls made"
                                     f"{in_flight} ({acc.summary()}); the answers so far are cached: run the job "
                                     "again, with a larger budget, to resume")
            if self.max_cost is not None and acc.calls:
                projected = acc.cost_usd + acc.cost_usd / acc.calls * (self._in_flight + 1)
                if projected > self.max_cost:
                    raise BudgetExceeded(f"LLM budget reached: the next call would bring the estimated cost to "
                                         f"${projected:.4f}, over max_cost=${self.max_cost} ({acc.summary()}); "
                                         "the answers so far are cached: run the job again to resume")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._budget_lock:
                self._in_flight -= 1

    def _call(self, messages: list[dict[str, Any]], params: Mapping[str, Any], sample: int) -> Completion:
        """One completion from the server, retried on rate limits, server errors, timeouts, broken replies."""
        import openai

        last, status = "", None
        attempts = self.retry.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            with self._call_slot():
                try:
                    response = self._client.chat.completions.create(model=self.model, messages=messages, **params)
                    reply = self._read(response, sample)
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    last = f"HTTP {status}: {exc.message.removeprefix(f'Error code: {status} - ')}"
                    if status not in RETRYABLE_STATUSES:
                        raise LLMError(f"LLM server {self.server} refused the request for model {self.model}: "
                                       f"{last}{_hint(status)}", server=self.server, model=self.model,
                                       status=status) from None
                    retry_after = _retry_after(exc.response.headers)
                except openai.APITimeoutError:
                    status, last = None, f"no reply within the {self.timeout:g} s timeout"
                except openai.APIConnectionError as exc:
                    status, last = None, f"connection error ({exc.__cause__ or exc})"
                except (openai.APIResponseValidationError, json.JSONDecodeError, _MalformedReply) as exc:
                    status, last = 200, f"malformed reply ({exc})"
                else:
                    cost = self.price.cost(reply.prompt_tokens, reply.completion_tokens) if self.price else 0.0
                    self.accounting._add(calls=1, prompt_tokens=reply.prompt_tokens,
                                         completion_tokens=reply.completion_tokens, cost_usd=cost)
                    return reply
            if attempt + 1 == attempts:
                break
            delay = self.retry.delay(attempt, retry_after)
            logger.info("LLM server %s: %s; retry %d of %d in %.2f s", self.server, last, attempt + 1,
                        self.retry.max_retries, delay)
            self.accounting._add(retries=1, waited_s=delay)
            time.sleep(delay)
        raise LLMError(f"LLM server {self.server} (model {self.model}) failed {attempts} times; last: {last}",
                       server=self.server, model=self.model, status=status)

    def _read(self, response: Any, sample: int) -> Completion:
        """The ``Completion`` in a chat-completions response, or ``_MalformedReply``."""
        choices = getattr(response, "choices", None)
        if not choices:
            raise _MalformedReply(f"no choices in {str(response)[:200]!r}")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            raise _MalformedReply(f"no message text in choice {str(choices[0])[:200]!r}")
        usage = getattr(response, "usage", None)
        return Completion(text=text, model=self.model, sample=sample,
                          finish_reason=getattr(choices[0], "finish_reason", None),
                          prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                          completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))


def _hint(status: int) -> str:
    """What to check for a status that retrying cannot fix."""
    if status in (401, 403):
        return f" (check the API key: {ENV_API_KEY} or OPENAI_API_KEY)"
    if status == 404:
        return f" (check the model name and the base URL, which usually ends in /v1: {ENV_BASE_URL})"
    return ""
