"""REAL's relevance filter (``zsclip.relevance``, ``zsclip corpus relevance``) and the oracle's ground-truth judge."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures_real import make_clip_retrieval, nickname
from typer.testing import CliRunner

from zsclip.chat_server import ChatServer
from zsclip.cli import app
from zsclip.corpus import Corpus
from zsclip.corpus_count import ClassNames, count_captions
from zsclip.errors import ZsclipError
from zsclip.llm import LLMClient
from zsclip.relevance import (
    QUESTION,
    ClassRelevance,
    is_yes,
    judge_relevance,
    stop_point,
    tail_classes,
    tail_size,
)

CLASSES = ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross", "Crested Auklet"]


@pytest.mark.parametrize("reply", ["yes", "Yes", " YES.", "Yes!", '"Yes"', "\nyes\n", "**Yes**"])
def test_exact_yes_ignores_case_whitespace_and_surrounding_punctuation(reply):
    assert is_yes(reply)


@pytest.mark.parametrize("reply", ["No", "Yes, it does.", "yes yes", "Yeah", "Y", "", "I think yes", "no."])
def test_anything_but_exactly_yes_is_not_yes(reply):
    assert not is_yes(reply)


def test_stopping_rule_needs_enough_judged_and_enough_yes_or_the_cap():
    t, f = True, False
    assert stop_point([t, f, f, f], min_judged=4, min_yes=2, max_judged=10) is None
    assert stop_point([t, t, f, f, t], min_judged=4, min_yes=2, max_judged=10) == 4
    assert stop_point([f] * 5 + [t, t, f], min_judged=4, min_yes=2, max_judged=10) == 7  # waits for the 2nd yes
    assert stop_point([f] * 12, min_judged=4, min_yes=2, max_judged=10) == 10  # the cap
    assert stop_point([t] * 3, min_judged=4, min_yes=0, max_judged=10) is None


def test_relevant_total_is_yes_rate_times_actual_freq():
    r = ClassRelevance("0", "a", actual_freq=250, judged=100, yes=30)
    assert r.yes_rate == pytest.approx(0.3) and r.relevant_total == pytest.approx(75.0)
    assert ClassRelevance("1", "b", actual_freq=0).relevant_total == 0.0  # nothing to judge


def test_tail_is_round_of_twenty_percent_not_the_authors_off_by_one():
    assert [tail_size(c) for c in (10, 15, 12, 13, 100, 1)] == [2, 3, 2, 3, 20, 0]  # authors: 3, 4, 3, 3, 21, 1
    totals = [50.0, 3.0, 7.0, 3.0, 90.0, 12.0, 0.0, 40.0, 8.0, 60.0]
    classes = [ClassRelevance(str(i), f"c{i}", actual_freq=int(t), judged=1, yes=1) for i, t in enumerate(totals)]
    assert tail_classes(classes) == [1, 6]  # the two lowest (ascending indices); the tie 3.0 / 3.0 goes to class 1


def _by_name_responder(official: dict[str, str]):
    """Yes when the caption contains the asked class's official name (not a nickname), as 'Yes.'."""
    def respond(body):
        prompt = body["messages"][-1]["content"]
        caption = prompt.split("' in '", 1)[1].rsplit("' refer to ", 1)[0]
        concept = prompt.rsplit("' refer to ", 1)[1].removesuffix("? (Yes/No)")
        return "Yes." if official[concept].lower() in caption.lower() else "No"
    return respond


def test_judging_through_the_llm_layer_counts_and_stops_as_specified(tmp_path):
    folder = make_clip_retrieval(tmp_path / "corpus", CLASSES, dim=8)
    corpus = Corpus.open(folder)
    classes = [ClassNames(str(i), n, [n] + ([nickname(n)] if i == 0 else [])) for i, n in enumerate(CLASSES)]
    with ChatServer(_by_name_responder({n: n for n in CLASSES}), record=True) as server:
        client = LLMClient("judge", base_url=server.url, cache=tmp_path / "cache.sqlite")
        results = judge_relevance(corpus, classes, client, min_judged=5, min_yes=4, max_judged=8, seed=3)
        asked = server.received
        # the question is REAL's, quoting the matched name and the whole caption
        prompt = server.requests[0]["messages"][-1]["content"]
        name, rest = prompt.removeprefix("Does the '").split("' in '", 1)
        caption, concept = rest.removesuffix("? (Yes/No)").rsplit("' refer to ", 1)
        assert concept in CLASSES and caption in corpus.captions(np.arange(corpus.num_rows))
        assert name.lower() in caption.lower()
        # a second run is answered from the cache: no call, the same result
        again = judge_relevance(corpus, classes, client, min_judged=5, min_yes=4, max_judged=8, seed=3)
        assert server.received == asked
    assert [(r.judged, r.yes) for r in again] == [(r.judged, r.yes) for r in results]
    captions = corpus.captions(np.arange(corpus.num_rows))
    for c, r in zip(classes, results):
        expected = count_captions(captions, [c]).metrics()[c.key]["actual_freq"]
        assert r.actual_freq == expected
    # class 0 is named officially in only 3 of its 12 captions: it never gets 4 yes and stops at the cap, 8
    albatross = results[0]
    assert albatross.judged == 8 and 0 < albatross.yes <= 3
    # the others are always named officially: every answer yes, stop at min_judged
    assert [(r.judged, r.yes) for r in results[1:3]] == [(5, 5), (5, 5)]
    assert results[3].relevant_total == results[3].actual_freq  # yes-rate 1
    assert results[0].relevant_total == pytest.approx(results[0].yes / 8 * results[0].actual_freq)


def test_judging_rejects_bad_parameters(tmp_path):
    corpus = Corpus.open(make_clip_retrieval(tmp_path / "corpus", CLASSES, dim=8))
    classes = [ClassNames("0", CLASSES[0], [CLASSES[0]])]
    with pytest.raises(ZsclipError, match="min_judged"):
        judge_relevance(corpus, classes, None, min_judged=10, max_judged=5)
    with pytest.raises(ZsclipError, match="name"):
        judge_relevance(corpus, classes, None, concept="the bird")


def _majority_species(folder):
    counts: dict[str, Counter] = {}
    for path in sorted((folder / "metadata").glob("*.parquet")):
        t = pq.read_table(path, columns=["caption", "species"]).to_pylist()
        for row in t:
            counts.setdefault(row["caption"], Counter())[row["species"]] += 1
    return {c: min(n.items(), key=lambda kv: (-kv[1], kv[0]))[0] for c, n in counts.items()}


def test_cli_against_the_oracle_on_a_small_world_export(tmp_path, monkeypatch):
    """With a perfect judge and every caption judged, relevant_total = the matched captions that truly show
    the class; with errors, answers flip; the budget stops the command with a clear error."""
    from zsclip.world.corpus import world_classes
    from zsclip.world.oracle import serve
    from zsclip.world.spec import build_world

    monkeypatch.setenv("ZSCLIP_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    export = tmp_path / "export"
    result = runner.invoke(app, ["world", "corpus", "--out", str(export), "--scale", "0.01", "--limit", "200",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    world = build_world(0)
    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(json.dumps({c.key: {"name": c.name, "alternates": {n: None for n in c.names}}
                                    for c in world_classes(world)}))
    truth = _majority_species(export)
    corpus = Corpus.open(export)
    captions = corpus.captions(np.arange(corpus.num_rows))
    server = serve(corpus=export, relevance_error_rate=0.0)
    try:
        out = tmp_path / "relevance.json"
        args = ["corpus", "relevance", "--corpus", str(export), "--synonyms", str(synonyms), "--llm", "oracle",
                "--base-url", server.url, "-o", str(out), "--min-judged", "1000", "--min-yes", "1",
                "--max-judged", "1000"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        judged_any = 0
        for c in world_classes(world):
            entry = report["classes"][c.key]
            maybe = [t for t in captions if any(n in t.lower() for n in c.names)]  # a cheap pre-filter
            matched = [t for t in maybe if count_captions([t], [c]).metrics()[c.key]["actual_freq"]]
            assert entry["actual_freq"] == entry["judged"] == len(matched)
            assert entry["yes"] == sum(truth[t] == int(c.key) for t in matched)
            assert entry["relevant_total"] == pytest.approx(entry["yes"])
            judged_any += entry["judged"]
        assert judged_any > 20 and len(report["tail"]) == 20 == report["params"]["tail_size"]
        lowest = sorted(report["classes"].items(), key=lambda kv: (kv[1]["relevant_total"], int(kv[0])))[:20]
        assert sorted(report["tail"], key=int) == sorted((k for k, _ in lowest), key=int)
        # a budget too small for the job stops it with one clear line and exit code 2
        result = runner.invoke(app, [*args, "--max-calls", "3", "--refresh", "-o", str(tmp_path / "r2.json")])
        assert result.exit_code == 2 and "budget" in result.output.lower()
    finally:
        server.stop()
    # a judge that errs: some answers flip
    server = serve(corpus=export, relevance_error_rate=0.5)
    try:
        client = LLMClient("oracle", base_url=server.url, cache=False)
        classes = world_classes(world)
        flipped = judge_relevance(corpus, classes, client, min_judged=1000, min_yes=1, max_judged=1000)
    finally:
        server.stop()
    assert sum(r.yes for r in flipped) != sum(e["yes"] for e in report["classes"].values())


def test_oracle_relevance_answers_and_unknown_captions():
    from zsclip.world.oracle import UNKNOWN_REPLY, Oracle
    from zsclip.world.spec import build_world

    world = build_world(0)
    a, b = world.species[0], world.species[1]
    oracle = Oracle(world, caption_species={"a photo of a thing": a.index}, relevance_error_rate=0.0)
    ask = QUESTION.format(name="thing", caption="a photo of a thing", concept="{}")
    assert oracle.prompt_kind(ask.format(a.name)) == "relevance"
    assert oracle.answer(ask.format(a.name)) == "Yes." and oracle.answer(ask.format(b.name)) == "No."
    assert oracle.answer(QUESTION.format(name="x", caption="never seen", concept=a.name)) == UNKNOWN_REPLY
    always_wrong = Oracle(world, caption_species={"a photo of a thing": a.index}, relevance_error_rate=1.0)
    assert always_wrong.answer(ask.format(a.name)) == "No."
