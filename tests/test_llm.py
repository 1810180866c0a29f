"""The LLM client against a real chat-completions server on loopback: cache, retries, re-asks, budget, accounting."""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import socket
import threading
from collections import Counter
from typing import Any

import pytest
from llm_server import ChatServer, Refusal, hang_after

from zsclip.errors import ZsclipError
from zsclip.llm import (
    Accounting,
    BudgetExceeded,
    LLMCache,
    LLMClient,
    LLMError,
    Price,
    ReplyTooLarge,
    RetryPolicy,
    price_for,
    request_key,
)
from zsclip.paths import cache_root

MODEL = "test-model"
KEY = "sk-zsclip-test-5ecret-7f3a9c1e"
PRICES = {MODEL: Price(input=1000.0, output=1000.0)}  # $0.001 per token: costs are easy to predict
FAST = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_max=2.0)


@pytest.fixture()
def server():
    with ChatServer() as srv:
        yield srv


def make_client(url: str, **kwargs: Any) -> LLMClient:
    """A client with fast retries, a short timeout and the test price table."""
    options: dict[str, Any] = {"base_url": url, "api_key": KEY, "timeout": 2.0, "retry": FAST, "prices": PRICES}
    return LLMClient(MODEL, **(options | kwargs))


def bullets(text: str) -> list[str]:
    """Parse ``- item`` lines; a reply without any is malformed."""
    items = [line[2:].strip() for line in text.splitlines() if line.startswith("- ")]
    if not items:
        raise ValueError("no '- ' lines")
    return items


def test_reply_usage_and_accounting(server):
    llm = make_client(server.url)
    reply = llm.complete("hello there", max_tokens=20)
    assert reply.text == "echo: hello there" and not reply.cached
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (2, 3, "stop")
    acc = llm.accounting
    assert (acc.calls, acc.cached, acc.tokens) == (1, 0, 5)
    assert acc.cost_usd == pytest.approx(0.005)
    assert acc.summary() == "LLM: 1 calls, 0 cached, 5 tokens, est. $0.0050"
    sent = server.requests[0]
    assert sent["model"] == MODEL and sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 20 and sent["_auth"] == f"Bearer {KEY}"
    assert (cache_root() / "llm-cache.sqlite").is_file()


def test_unknown_model_costs_nothing_with_a_note(server):
    llm = make_client(server.url, prices={})
    llm.complete("hi")
    assert llm.accounting.cost_usd == 0.0
    assert llm.accounting.summary().endswith("(no price for test-model: counted as $0)")


def test_repeated_job_makes_no_calls_and_needs_no_server(server):
    prompts = ["one", "two", "three"]
    first = make_client(server.url).complete_many(prompts)
    assert [r.value for r in first] == ["echo: one", "echo: two", "echo: three"]
    url = server.url
    server.stop()
    again = make_client(url)
    second = again.complete_many(prompts)
    assert [r.value for r in second] == [r.value for r in first]
    assert (again.accounting.calls, again.accounting.cached) == (0, 3)
    with pytest.raises(LLMError, match="connection error"):  # the server really is gone
        again.complete("four")


def test_refresh_skips_reading_the_cache_but_writes_it(server):
    count = Counter[str]()

    def numbered(body: dict[str, Any]) -> str:
        count["n"] += 1
        return f"version {count['n']}"

    server.responder = numbered
    assert make_client(server.url).complete("q").text == "version 1"
    assert make_client(server.url).complete("q").text == "version 1"
    fresh = make_client(server.url, refresh=True)
    assert fresh.complete("q").text == "version 2" and fresh.accounting.calls == 1
    assert make_client(server.url).complete("q").text == "version 2"
    assert make_client(server.url).complete("q", refresh=True).text == "version 3"


def test_rate_limit_waits_for_retry_after(server):
    server.fault("status", status=429, retry_after="1")
    llm = make_client(server.url)
    assert llm.complete("hi").text == "echo: hi"
    assert len(server.requests) == 2
    assert (llm.accounting.calls, llm.accounting.retries, llm.accounting.waited_s) == (1, 1, 1.0)
    # the run record's accounting: every counter under its documented name
    assert llm.accounting.as_dict() == {"calls": 1, "cached": 0, "prompt_tokens": 1, "completion_tokens": 2,
                                        "cost_usd": pytest.approx(0.003), "retries": 1, "waited_s": 1.0,
                                        "reasks": 0, "failures": 0, "unpriced_models": []}


def test_server_error_then_success(server):
    server.fault("status", status=500)
    llm = make_client(server.url)
    assert llm.complete("hi").text == "echo: hi"
    assert len(server.requests) == 2 and llm.accounting.retries == 1
    assert llm.accounting.waited_s < 0.01  # the test's tiny backoff base, not a Retry-After


def test_timeout_then_success(server):
    """The first request is never answered (until the test ends), so it times out whatever the machine's load; the
    retry is answered."""
    release = threading.Event()
    server.responder = _hang_first(release)
    try:
        llm = make_client(server.url, timeout=0.3)
        assert llm.complete("hi").text == "echo: hi"
    finally:
        release.set()
    assert len(server.requests) == 2 and llm.accounting.calls == 1 and llm.accounting.retries == 1


def _hang_first(release: threading.Event) -> Any:
    """A responder that holds the first request until ``release`` and answers every later one at once."""
    first = threading.Event()

    def respond(body: dict[str, Any]) -> str:
        if not first.is_set():
            first.set()
            release.wait()
        return "echo: " + body["messages"][-1]["content"]

    return respond


@pytest.mark.parametrize("kind", ["short_body", "cut_json"])
def test_truncated_reply_is_retried(server, kind):
    server.fault(kind)
    llm = make_client(server.url)
    assert llm.complete("hi").text == "echo: hi"
    assert len(server.requests) == 2 and llm.accounting.calls == 1


def test_retries_exhausted_raise_a_clear_error(server):
    for _ in range(4):
        server.fault("status", status=503)
    llm = make_client(server.url)
    with pytest.raises(LLMError) as info:
        llm.complete("hi")
    message = str(info.value)
    assert server.url in message and MODEL in message and "HTTP 503" in message and "4 times" in message
    assert info.value.status == 503 and isinstance(info.value, ZsclipError)
    assert len(server.requests) == 4 and llm.accounting.calls == 0


def test_bad_key_is_not_retried(server):
    server.fault("status", status=401)
    with pytest.raises(LLMError, match="HTTP 401.*check the API key") as info:
        make_client(server.url).complete("hi")
    assert info.value.status == 401 and len(server.requests) == 1


@pytest.mark.parametrize("status, hint", [(403, "check the API key"), (404, "check the model name and the base URL"),
                                          (400, None)])
def test_a_refusal_says_what_to_check(server, status, hint):
    server.fault("status", status=status)
    with pytest.raises(LLMError, match=f"HTTP {status}") as info:
        make_client(server.url).complete("hi")
    assert info.value.status == status and len(server.requests) == 1  # not retried
    others = {"check the API key", "check the model name and the base URL"} - {hint}
    assert (hint is None or hint in str(info.value)) and not any(o in str(info.value) for o in others)


def test_wrong_format_is_asked_again_and_both_replies_are_cached(server):
    seen = Counter[str]()

    def sloppy_then_right(body: dict[str, Any]) -> str:
        seen["asks"] += 1
        return "Sure! Here are some features." if seen["asks"] == 1 else "- red crest\n- short beak"

    server.responder = sloppy_then_right
    llm = make_client(server.url)
    assert llm.ask("features of a cardinal?", bullets) == ["red crest", "short beak"]
    assert (llm.accounting.calls, llm.accounting.reasks) == (2, 1)
    again = make_client(server.url)
    assert again.ask("features of a cardinal?", bullets) == ["red crest", "short beak"]
    assert (again.accounting.calls, again.accounting.cached) == (0, 2)


def test_failed_items_are_recorded_while_the_others_succeed(server):
    def reply(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        if prompt == "refused":
            raise Refusal(400)
        return "I cannot list features." if prompt == "stubborn" else f"- {prompt}"

    server.responder = reply
    llm = make_client(server.url, concurrency=2)
    results = llm.complete_many(["a", "stubborn", "b", "refused", "c"], bullets, max_parse_attempts=3)
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert [r.value for r in results if r.ok] == [["a"], ["b"], ["c"]]
    assert "did not parse" in results[1].error and results[1].text == "I cannot list features."
    assert "last problem: no '- ' lines; last reply: 'I cannot list features.'" in results[1].error
    assert results[1].attempts == 3 and results[1].value is None
    assert "HTTP 400" in results[3].error and results[3].attempts == 1 and results[3].value is None
    asked = Counter(r["messages"][-1]["content"] for r in server.requests)
    assert asked["stubborn"] == 3 and asked["refused"] == 1
    assert llm.accounting.failures == 2 and "2 failed" in llm.accounting.summary()


def test_max_calls_stops_the_job_and_a_rerun_resumes(server):
    prompts = [f"item {i}" for i in range(5)]
    with pytest.raises(BudgetExceeded, match="max_calls=2"):
        make_client(server.url, max_calls=2, concurrency=3).complete_many(prompts)
    assert len(server.requests) == 2 and len(LLMCache()) == 2
    with pytest.raises(BudgetExceeded):
        make_client(server.url, max_calls=2, concurrency=1).complete_many(prompts)
    assert len(server.requests) == 4
    last = make_client(server.url, max_calls=2)
    results = last.complete_many(prompts)
    assert [r.value for r in results] == [f"echo: {p}" for p in prompts]
    assert (last.accounting.calls, last.accounting.cached) == (1, 4) and len(server.requests) == 5


def test_max_cost_stops_before_the_call_that_would_pass_it(server):
    llm = make_client(server.url, max_cost=0.012, concurrency=1)  # each call: 5 tokens, $0.005; est. 4 tokens
    with pytest.raises(BudgetExceeded, match="max_cost"):
        llm.complete_many(["a b", "c d", "e f", "g h"], max_tokens=3)
    assert llm.accounting.calls == 2 and llm.accounting.cost_usd == pytest.approx(0.010)


def _job_in_process(url: str, cache_path: str, prompts: list[str], barrier: Any, out: str) -> None:
    """Child process: make a client, wait until the other process has one too, run the job, write the calls made."""
    from pathlib import Path

    llm = make_client(url, cache=cache_path, concurrency=4, timeout=120.0)
    try:
        barrier.wait()
    except BaseException:
        barrier.abort()
        raise
    results = llm.complete_many(prompts)
    assert all(r.ok for r in results)
    Path(out).write_text(str(llm.accounting.calls))


def test_two_processes_write_the_cache_at_once(server, tmp_path):
    """Two processes run overlapping jobs on one new cache file. They start together (a barrier, after each has
    made its client), and the server answers no request until both are calling, so their writes interleave
    whatever the machine's load; no timing decides the outcome."""
    path = str(tmp_path / "shared.sqlite")
    jobs = [[f"prompt {i}" for i in range(0, 30)], [f"prompt {i}" for i in range(49, 19, -1)]]  # 20-29 in both
    started = {"first": threading.Event(), "second": threading.Event()}
    overlapped: list[bool] = []

    def once_both_are_calling(body: dict[str, Any]) -> str:  # no reply until both processes are calling
        prompt = body["messages"][-1]["content"]
        number = int(prompt.split()[1])
        if number < 20:
            started["first"].set()
        if number >= 30:
            started["second"].set()
        overlapped.append(all(event.wait(timeout=100) for event in started.values()))
        return "echo: " + prompt

    server.responder = once_both_are_calling
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2, timeout=240)
    outs = [str(tmp_path / f"calls-{n}.txt") for n in range(2)]
    children = [ctx.Process(target=_job_in_process, args=(server.url, path, prompts, barrier, out))
                for prompts, out in zip(jobs, outs)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [child.exitcode for child in children] == [0, 0]
    calls = [int(open(out).read()) for out in outs]
    assert overlapped and all(overlapped)  # every reply was sent while both processes were calling
    assert all(20 <= c <= 30 for c in calls) and len(LLMCache(path)) == 50  # only 20-29 may come from the cache
    assert len(server.requests) == sum(calls)  # a reply found in the cache was not asked for again
    rerun = make_client(server.url, cache=path)
    results = rerun.complete_many([f"prompt {i}" for i in range(50)])
    assert [r.value for r in results] == [f"echo: prompt {i}" for i in range(50)]
    assert rerun.accounting.calls == 0


def test_api_key_and_server_come_from_the_environment_and_are_never_stored(server, monkeypatch):
    monkeypatch.setenv("ZSCLIP_LLM_MODEL", MODEL)
    monkeypatch.setenv("ZSCLIP_LLM_BASE_URL", server.url)
    monkeypatch.setenv("ZSCLIP_LLM_API_KEY", KEY)
    llm = LLMClient(retry=FAST, prices=PRICES)
    assert llm.complete("remember this").text == "echo: remember this"
    assert server.requests[-1]["_auth"] == f"Bearer {KEY}"
    files = list(cache_root().glob("llm-cache.sqlite*"))
    assert files and any(b"remember this" in f.read_bytes() for f in files)
    for f in files:
        assert KEY.encode() not in f.read_bytes() and server.url.encode() not in f.read_bytes()


def test_openai_variables_are_the_fallback(server, monkeypatch):
    for name in ("ZSCLIP_LLM_MODEL", "ZSCLIP_LLM_BASE_URL", "ZSCLIP_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMError, match="ZSCLIP_LLM_MODEL"):
        LLMClient()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fallback")
    llm = LLMClient(MODEL, retry=FAST, prices=PRICES)
    assert llm.server == server.url and llm.complete("hi").text == "echo: hi"
    assert server.requests[-1]["_auth"] == "Bearer sk-openai-fallback"


def test_cache_key_covers_model_messages_parameters_and_sample():
    messages = [{"role": "user", "content": "q"}]
    key = request_key(MODEL, messages, {"temperature": 0.0}, 0)
    assert len(key) == 64 and key == request_key(MODEL, messages, {"temperature": 0.0}, 0)
    assert len({key, request_key("other", messages, {"temperature": 0.0}, 0),
                request_key(MODEL, [{"role": "user", "content": "Q"}], {"temperature": 0.0}, 0),
                request_key(MODEL, messages, {"temperature": 0.7}, 0),
                request_key(MODEL, messages, {"temperature": 0.0, "max_tokens": 10}, 0),
                request_key(MODEL, messages, {"temperature": 0.0}, 1)}) == 6


def test_the_cache_is_shared_across_server_addresses_and_tells_message_roles_apart():
    """The same request to the same model is one cache entry wherever the model is served from; the same text
    under another role is another request."""
    with ChatServer() as first, ChatServer() as second:
        assert first.url != second.url
        make_client(first.url).complete("q")
        moved = make_client(second.url)
        assert moved.complete("q").cached and len(second.requests) == 0
        as_system = moved.complete([{"role": "system", "content": "q"}])
        assert not as_system.cached and len(second.requests) == 1
        assert second.requests[0]["messages"] == [{"role": "system", "content": "q"}]
    user, system = [{"role": "user", "content": "q"}], [{"role": "system", "content": "q"}]
    assert request_key(MODEL, user, {}, 0) != request_key(MODEL, system, {}, 0)
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    swapped = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    assert request_key(MODEL, turns, {}, 0) != request_key(MODEL, swapped, {}, 0)


def test_temperature_written_as_int_hits_the_same_cache_entry(server):
    make_client(server.url).complete("q", temperature=0)
    again = make_client(server.url)
    again.complete("q", temperature=0.0)
    assert again.accounting.cached == 1 and len(server.requests) == 1


def test_backoff_grows_with_jitter_and_respects_retry_after():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=10.0)
    for retry, full in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 10.0)]:
        assert all(0.5 * full <= policy.delay(retry) <= full for _ in range(50))
    assert policy.delay(0, retry_after=3.0) == 3.0 and policy.delay(0, retry_after=100.0) == 10.0


def test_price_table_matches_dated_and_tagged_names(tmp_path):
    from zsclip.llm import load_prices

    prices = load_prices()
    assert price_for(prices, "gpt-4o-mini") == price_for(prices, "gpt-4o-mini-2024-07-18") is not None
    assert price_for(prices, "gpt-4o-2024-08-06") == prices["gpt-4o"]
    assert price_for({"llama3": Price(0, 0)}, "llama3:8b") == Price(0, 0)
    assert price_for(prices, "my-local-model") is None
    bad = tmp_path / "prices.json"
    bad.write_text('{"models": {"m": {"input": "cheap"}}}')
    with pytest.raises(ZsclipError, match=r"prices.json: models.m"):
        load_prices(bad)


def test_accounting_can_be_shared_by_clients(server):
    shared = Accounting()
    make_client(server.url, accounting=shared).complete("a")
    make_client(server.url, accounting=shared).complete("a")
    assert (shared.calls, shared.cached) == (1, 1)
    assert shared.as_dict()["calls"] == 1


# -- failing fast, saying what happens, untrusted replies, budget reservation, broken cache ---------------

@pytest.fixture()
def refusing_url():
    """A loopback address that refuses connections: a socket bound (so no one else takes the port) but not
    listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


def test_a_server_that_is_not_there_is_reported_at_once_without_retries(refusing_url, caplog):
    caplog.set_level(logging.INFO, logger="zsclip.llm")
    llm = make_client(refusing_url, retry=RetryPolicy(max_retries=3, backoff_base=0.001))
    with pytest.raises(LLMError) as info:
        llm.complete_many(["a", "b", "c"])
    message = str(info.value)
    assert refusing_url in message and "not reachable" in message and "connection error" in message
    assert llm.accounting.retries == 0  # retries are for flaky servers, not for absent ones
    assert any(refusing_url in r.getMessage() and "contacting" in r.getMessage() for r in caplog.records)


def test_a_server_that_answered_before_is_retried_and_each_retry_is_one_warning(caplog):
    caplog.set_level(logging.INFO, logger="zsclip.llm")
    with ChatServer() as server:
        llm = make_client(server.url)
        server.fault("no_length")  # the server closes this connection: the next request must connect anew
        assert llm.complete("first").text == "echo: first"
    with pytest.raises(LLMError, match="failed 4 times; last: connection error"):
        llm.complete("second")
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert llm.accounting.retries == 3 and len(retries) == 3
    assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage() for r in retries)
    assert [r.getMessage().split("; ")[-1].split(" in ")[0] for r in retries] == [
        "retry 1 of 3", "retry 2 of 3", "retry 3 of 3"]


@pytest.mark.parametrize("fault", [None, "no_length"])
def test_a_reply_over_the_size_cap_fails_its_item_and_is_not_cached(server, fault):
    server.responder = lambda body: "word " * 2000 if body["messages"][-1]["content"] == "big" else "small"
    llm = make_client(server.url, max_reply_bytes=4000)
    if fault:
        server.fault(fault)
    results = llm.complete_many(["big", "little"])
    assert not results[0].ok and "larger than the 4,000-byte cap" in results[0].error
    assert results[1].value == "small"
    assert len(LLMCache()) == 1 and llm.accounting.failures == 1
    assert len(server.requests) == 2  # a too-large reply is not asked again


@pytest.mark.parametrize("usage", [{"prompt_tokens": -75_000_000, "completion_tokens": -5},
                                   {"prompt_tokens": "many", "completion_tokens": None}, [1, 2], "x"])
def test_token_usage_from_the_server_is_untrusted(server, usage):
    server.fault("usage", usage=usage)
    llm = make_client(server.url)
    reply = llm.complete("hello there")
    assert reply.prompt_tokens >= 0 and reply.completion_tokens >= 0
    assert llm.accounting.cost_usd >= 0 and "$-" not in llm.accounting.summary()


def test_absurd_token_usage_is_clamped(server):
    server.fault("usage", usage={"prompt_tokens": 10**15, "completion_tokens": 10**15})
    llm = make_client(server.url)
    reply = llm.complete("hello there", max_tokens=50)
    assert reply.completion_tokens == 50 and reply.prompt_tokens < 1000


def test_max_cost_below_one_call_makes_no_call_even_with_concurrency(server):
    llm = make_client(server.url, max_cost=0.002, concurrency=4)  # one call: ≥ 1 prompt + 10 completion tokens
    with pytest.raises(BudgetExceeded, match="max_cost"):
        llm.complete_many([f"item {i}" for i in range(8)], max_tokens=10)
    assert len(server.requests) == 0 and llm.accounting.calls == 0


def test_concurrent_calls_reserve_the_budget_before_sending(server):
    """Eight workers, a budget for two calls: no request is answered until every worker but the two whose calls are
    in flight has stopped (refused by the budget, or finding the job stopped), so the refusals cannot be helped by
    replies that came back early, whatever the machine's load."""
    release = threading.Event()
    server.responder = hang_after(0, release)

    def release_when_only_the_calls_in_flight_remain() -> None:
        for _ in range(6000):  # a condition, polled; the bound only keeps a broken client from hanging the test
            workers = [t for t in threading.enumerate() if t.name == "zsclip-llm"]
            if len(server.requests) >= 2 and len(workers) <= 2:
                break
            release.wait(0.01)
        release.set()

    watcher = threading.Thread(target=release_when_only_the_calls_in_flight_remain)
    watcher.start()
    llm = make_client(server.url, max_cost=0.025, concurrency=8)  # each call reserves ~$0.012
    try:
        with pytest.raises(BudgetExceeded):
            llm.complete_many([f"item {i}" for i in range(8)], max_tokens=10)
    finally:
        release.set()
        watcher.join()
    assert len(server.requests) == 2 and llm.accounting.cost_usd <= 0.025


def test_a_corrupt_cache_file_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "llm-cache.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ZsclipError) as info:
        LLMCache(path)
    message = str(info.value)
    assert str(path) in message and "not a readable SQLite" in message and f"rm -f {path}" in message


def test_progress_shows_requests_in_flight_and_waiting(server, monkeypatch):
    import contextlib

    import zsclip.llm as llm_module

    statuses: list[str] = []
    advanced: list[int] = []

    @contextlib.contextmanager
    def recording_bar(description: str, total: int):
        def advance(n: int, status: str | None = None) -> None:
            advanced.append(n)
            if status:
                statuses.append(status)
        yield advance

    monkeypatch.setattr(llm_module, "progress_bar", recording_bar)
    make_client(server.url, concurrency=2).complete_many([f"p{i}" for i in range(5)])
    assert any("in flight" in s and "waiting" in s for s in statuses)
    assert statuses[-1] == "0 in flight, 0 waiting" and sum(advanced) == 5  # the bar reaches its total
    statuses.clear()
    with pytest.raises(BudgetExceeded):  # a stopped job has nothing waiting: the rest will not be sent
        make_client(server.url, concurrency=1, max_calls=2).complete_many([f"q{i}" for i in range(6)])
    assert statuses[-1] == "0 in flight, 0 waiting"


def test_timeout_and_retry_count_are_options(server):
    release = threading.Event()
    server.responder = hang_after(0, release)
    try:
        llm = make_client(server.url, timeout=0.2, retry=RetryPolicy(max_retries=1, backoff_base=0.001))
        with pytest.raises(LLMError, match=r"failed 2 times; last: no reply within the 0.2 s timeout"):
            llm.complete("hi")
    finally:
        release.set()
    assert len(server.requests) == 2


def test_a_too_large_reply_error_names_the_server_and_the_model(server):
    server.responder = lambda body: "word " * 2000
    llm = make_client(server.url, max_reply_bytes=4000)
    with pytest.raises(ReplyTooLarge) as info:
        llm.complete("big")
    assert (info.value.server, info.value.model) == (llm.server, MODEL)


def test_a_connect_timeout_to_a_server_never_reached_is_not_retried(server, monkeypatch):
    """A server that could not even be connected to (a connect timeout, not a slow reply) is reported at once as
    unreachable; the same timeout once the server has answered is retried."""
    import openai

    # the HTTP library openai is built on: httpx, or httpx2 in newer releases (zsclip's client takes either)
    httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])
    llm = make_client(server.url, timeout=2.0)
    attempts = []

    def connect_timeout(**kwargs):
        attempts.append(kwargs)
        request = httpx.Request("POST", server.url)
        raise openai.APITimeoutError(request=request) from httpx.ConnectTimeout("timed out", request=request)

    real_create = llm._client.chat.completions.create
    monkeypatch.setattr(llm._client.chat.completions, "create", connect_timeout)
    with pytest.raises(LLMError, match="not reachable: connection error \\(no connection within 2 s\\)"):
        llm.complete("hi")
    assert len(attempts) == 1 and llm.accounting.retries == 0
    monkeypatch.setattr(llm._client.chat.completions, "create", real_create)
    assert llm.complete("hello").text == "echo: hello"  # the server answered once: now a timeout is retried
    monkeypatch.setattr(llm._client.chat.completions, "create", connect_timeout)
    with pytest.raises(LLMError, match="failed 4 times; last: no reply within the 2 s timeout"):
        llm.complete("again")
    assert len(attempts) == 5 and llm.accounting.retries == 3


def test_malformed_messages_and_an_unpriced_budget_are_explained(server, caplog):
    from zsclip.llm import as_messages

    with pytest.raises(ZsclipError, match="LLM message 1 has no 'role' or 'content'.*give each message both"):
        as_messages([{"role": "user", "content": "a"}, {"content": "b"}])
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    with caplog.at_level(logging.WARNING, logger="zsclip.llm"):
        make_client(server.url, prices={}, max_cost=0.5)
    assert "no price for LLM model test-model: max_cost=0.5 cannot stop this job" in caplog.text


def test_each_cache_row_holds_its_request_as_provenance(server):
    """A cached reply can be read back with everything its key was made of (and nothing about the server)."""
    import json
    import sqlite3

    make_client(server.url).complete("q", sample=2, max_tokens=7)
    with sqlite3.connect(cache_root() / "llm-cache.sqlite") as db:
        model, request, text = db.execute("SELECT model, request, text FROM replies").fetchone()
    assert (model, text) == (MODEL, "echo: q")
    assert json.loads(request) == {"model": MODEL, "messages": [{"role": "user", "content": "q"}],
                                   "params": {"max_tokens": 7, "temperature": 0.0}, "sample": 2}


def test_the_cache_key_of_a_request_is_stable_across_versions():
    """Replies cached by one zsclip version are found by the next: the key of a fixed request is pinned (a change
    to how keys are made must bump the cache format on purpose, as every cached reply would be paid for again)."""
    key = request_key(MODEL, [{"role": "user", "content": "q"}], {"temperature": 0.0}, 1)
    assert key == "065c6f07791235b8bb20e809dcd9faa9016c78503199eb0e9339a2e31a090fb6"


def test_each_unparseable_reply_is_logged_with_its_number(server, caplog):
    server.responder = lambda body: "no bullets here"
    caplog.set_level(logging.INFO, logger="zsclip.llm")
    with pytest.raises(LLMError):
        make_client(server.url).ask("features?", bullets, max_parse_attempts=2)
    lines = [r.getMessage() for r in caplog.records if "did not parse" in r.getMessage()]
    assert lines == ["LLM reply 1 of 2 did not parse (no '- ' lines)", "LLM reply 2 of 2 did not parse (no '- ' lines)"]
