"""Descriptor and synonym generation against the toy world's oracle LLM stand-in on loopback: parsing, the
answers' truth at the configured rates, the files and their provenance, the cache, failures, the commands."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from llm_server import hang_after
from typer.testing import CliRunner

import zsclip.generate_cli as generate_cli
from zsclip.chat_server import ChatServer
from zsclip.errors import ZsclipError
from zsclip.generate import (
    clean_synonym,
    confusions_from_scores,
    filter_synonyms,
    generate_descriptors,
    generate_synonyms,
    merge_synonyms,
    meta_prompt_path,
    parse_bullets,
    parse_sentence,
    parse_synonym_list,
    provenance_path,
    public_url,
    write_descriptor_file,
    write_synonym_file,
)
from zsclip.llm import LLMCache, LLMClient, RetryPolicy
from zsclip.paths import cache_root, resource_dir
from zsclip.prompts import match_descriptors, read_descriptor_file
from zsclip.records import Record
from zsclip.world import build_world
from zsclip.world.oracle import UNKNOWN_REPLY, Oracle, judge_descriptor, responder, serve

GENERIC, WRONG = 0.2, 0.1
WORLD = build_world(0)
SPECIES = WORLD.species[::13]  # 8 species from different genera and tiers
CLASSES = [s.name for s in SPECIES]
BY_NAME = {s.name: s for s in WORLD.species}


def _start(**rates: float) -> Iterator[str]:
    server = serve(port=0, seed=0, **rates)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def oracle_url() -> Iterator[str]:
    """The oracle with generic and wrong answers at GENERIC and WRONG."""
    yield from _start(generic_rate=GENERIC, wrong_rate=WRONG)


@pytest.fixture(scope="module")
def truthful_url() -> Iterator[str]:
    """The oracle that only tells the truth."""
    yield from _start(generic_rate=0.0, wrong_rate=0.0)


def client(url: str, **kwargs: Any) -> LLMClient:
    return LLMClient("oracle", base_url=url, retry=RetryPolicy(max_retries=1, backoff_base=0.001), prices={},
                     **kwargs)


# -- descriptors -------------------------------------------------------------------------------------------

def test_cbd_descriptors_follow_the_rates_and_are_written_with_provenance(oracle_url, tmp_path):
    with client(oracle_url) as llm:
        result = generate_descriptors(CLASSES, llm, "cbd", domain="creature")
    assert result.failed == {} and list(result.per_class) == CLASSES
    kinds = Counter(judge_descriptor(BY_NAME[c], d) for c, ds in result.per_class.items() for d in ds)
    total = sum(kinds.values())
    assert kinds["unknown"] == 0 and 5 * len(CLASSES) <= total <= 7 * len(CLASSES)
    assert kinds["true"] / total == pytest.approx(1 - GENERIC - WRONG, abs=0.15)
    assert kinds["generic"] / total == pytest.approx(GENERIC, abs=0.12)
    assert kinds["wrong"] / total == pytest.approx(WRONG, abs=0.1)
    acc = result.provenance["accounting"]
    assert (acc["calls"], acc["cached"], acc["failures"]) == (len(CLASSES), 0, 0)

    path = write_descriptor_file(tmp_path / "descriptors.json", result.per_class, result.provenance)
    read = read_descriptor_file(path)
    assert list(read) == CLASSES and read == result.per_class
    assert match_descriptors(read, CLASSES) == [result.per_class[c] for c in CLASSES]
    prov = Record.read(provenance_path(path))  # the one record type: kind "generation"
    assert prov.kind == "generation" and prov.model == {"name": "oracle", "server": oracle_url}
    assert prov.method["name"] == "cbd"
    params = prov.method["params"]
    assert params["meta_prompt"]["sha256"] == hashlib.sha256(meta_prompt_path("cbd.txt").read_bytes()).hexdigest()
    assert prov.counts["classes"] == len(CLASSES) and prov.counts["items"] == total
    assert (params["temperature"], params["seed"], prov.results["failed_classes"]) == (0.0, 0, {})
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary file

    with client(oracle_url) as llm:  # a second run is answered from the cache
        again = generate_descriptors(CLASSES, llm, "cbd", domain="creature")
        assert (llm.accounting.calls, llm.accounting.cached) == (0, len(CLASSES))
    assert again.per_class == result.per_class


def test_a_class_the_llm_cannot_answer_is_reported_and_the_others_succeed(oracle_url):
    classes = [*CLASSES[:2], "woolly mammoth"]
    with client(oracle_url) as llm:
        result = generate_descriptors(classes, llm, "cbd", domain="creature")
        assert llm.accounting.failures == 1 and llm.accounting.reasks == 2  # asked three times, then given up
    assert list(result.failed) == ["woolly mammoth"] and "did not parse" in result.failed["woolly mammoth"]
    assert result.per_class["woolly mammoth"] == [] and result.succeeded == CLASSES[:2]
    assert result.provenance["failed_classes"].keys() == {"woolly mammoth"}

    with client(oracle_url) as llm:
        synonyms = generate_synonyms(classes, llm, domain="creature")
    assert list(synonyms.failed) == ["woolly mammoth"]
    assert synonyms.per_class["woolly mammoth"] == ["woolly mammoth"]


def test_cupl_sentences_one_per_answer_and_several_samples(truthful_url):
    classes = CLASSES[:3]
    with client(truthful_url) as llm:
        result = generate_descriptors(classes, llm, "cupl", domain="creature", samples=2)
    n_prompts = len(meta_prompt_path("cupl.txt").read_text().strip().splitlines())
    assert result.provenance["counts"]["requests"] == len(classes) * n_prompts * 2
    assert result.provenance["temperature"] == 0.99  # CuPL samples, as its authors did
    for name, sentences in result.per_class.items():
        assert n_prompts <= len(sentences) <= 2 * n_prompts
        assert all(name in s and s.endswith(".") for s in sentences)


def test_contrastive_descriptors_name_what_sets_a_class_apart(truthful_url):
    confusions = {s.name: [o.name for o in WORLD.species if o.genus == s.genus and o is not s][:3] for s in SPECIES}
    with client(truthful_url) as llm:
        result = generate_descriptors(CLASSES, llm, "contrastive", domain="creature", confusions=confusions)
        with pytest.raises(ZsclipError, match="confused with"):
            generate_descriptors(CLASSES, llm, "contrastive", domain="creature", confusions={})
    assert result.failed == {} and result.provenance["confusions"] == confusions
    for name, descriptors in result.per_class.items():
        assert all(judge_descriptor(BY_NAME[name], d) == "true" for d in descriptors)
        # the first descriptor is an attribute some confused class does not share
        assert any(judge_descriptor(BY_NAME[o], descriptors[0]) == "wrong" for o in confusions[name])


def test_confusions_from_scores_ranks_the_mean_score_of_other_classes():
    names = ["a", "b", "c", "d"]
    scores = np.array([[0.9, 0.5, 0.1, 0.7], [0.8, 0.6, 0.2, 0.1], [0.3, 0.9, 0.4, 0.2],
                       [0.1, 0.2, 0.9, 0.8], [0.4, 0.1, 0.3, 0.9]])
    labels = np.array([0, 0, 1, 2, 3])
    assert confusions_from_scores(scores, labels, names, k=2) == {
        "a": ["b", "d"], "b": ["c", "a"], "c": ["d", "b"], "d": ["a", "c"]}
    with pytest.raises(ZsclipError, match="no images"):
        confusions_from_scores(scores[:4], labels[:4], names)


# -- synonyms ----------------------------------------------------------------------------------------------

def test_synonyms_from_the_oracle_cleaned_written_and_filtered(oracle_url, tmp_path):
    with client(oracle_url) as llm:
        result = generate_synonyms(CLASSES, llm, domain="creature")
    assert result.failed == {}
    known = {w for s in WORLD.species for w in (s.name, *s.synonyms)}
    made_up = 0
    for s in SPECIES:
        names = result.per_class[s.name]
        assert names[0] == s.name and set(s.synonyms) <= set(names) and len(set(names)) == len(names)
        made_up += sum(n not in known and n not in ("creature", "critter", "animal", "little beast") for n in names)
    slots = sum(1 + len(s.synonyms) for s in SPECIES)
    assert 0 < made_up / slots < 3 * WRONG

    path = write_synonym_file(tmp_path / "synonyms.json", result.per_class, result.provenance)
    data = json.loads(path.read_text())
    assert list(data) == [str(i) for i in range(len(CLASSES))]
    assert [e["name"] for e in data.values()] == CLASSES
    assert all(list(e["alternates"]) == result.per_class[e["name"]] for e in data.values())
    assert all(v is None for e in data.values() for v in e["alternates"].values())
    assert all(e["most_common_name"] == e["name"] for e in data.values())
    assert Record.read(provenance_path(path)).method["name"] == "synonyms"

    def classifier(texts: list[str]) -> list[int]:  # a perfect CLIP: true names go to their own class
        owner = {n: i for i, s in enumerate(SPECIES) for n in (s.name, *s.synonyms)}
        return [owner.get(t.removeprefix("a photo of a "), -1) for t in texts]

    kept = filter_synonyms(result.per_class, classifier)
    assert kept == {s.name: [s.name, *[n for n in result.per_class[s.name] if n in s.synonyms]] for s in SPECIES}


def test_synonym_cleaning_rules():
    reply = ("Here are some common ways of referring to it:\n1. Foo-bar (bird)\n2) foo_bar\n3. \"Grey Foo\".\n"
             "- FOO BAR\n(4) [old name] Bazz\n\nHope this helps!")
    assert parse_synonym_list(reply) == ["foo bar", "grey foo", "bazz"]
    assert clean_synonym("10. Black-footed  Albatross (Phoebastria nigripes);") == "black footed albatross"
    assert merge_synonyms("Foo-Bar", ["foo bar", "grey foo", "grey foo"]) == ["Foo-Bar", "grey foo"]
    for bad in (UNKNOWN_REPLY, "", "Foo bar is also called grey foo."):
        with pytest.raises(ValueError):
            parse_synonym_list(bad)


def test_descriptor_and_sentence_parsing():
    reply = "There are several:\n- It has a red crest.\n  - a long tail\n-no space\n* star\n- a long tail"
    assert parse_bullets(reply) == ["has a red crest", "a long tail"]
    assert parse_sentence("  A red   bird\nwith a crest. ") == ["A red bird with a crest."]
    for parse, bad in ((parse_bullets, UNKNOWN_REPLY), (parse_sentence, UNKNOWN_REPLY), (parse_sentence, " ")):
        with pytest.raises(ValueError):
            parse(bad)
    assert public_url("https://user:sk-secret@llm.example.org:8443/v1?key=sk-secret") == \
        "https://llm.example.org:8443/v1"


# -- the oracle server -------------------------------------------------------------------------------------

def test_oracle_speaks_the_chat_completions_protocol(oracle_url):
    with urllib.request.urlopen(oracle_url + "/models", timeout=5) as response:
        assert json.load(response)["data"][0]["id"] == "oracle"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(oracle_url + "/nowhere", timeout=5)
    assert info.value.code == 404
    with client(oracle_url, cache=False) as llm:
        prompt = "Here are good templates:\n- a photo of a {}.\nWrite three new templates, each with {}."
        reply = llm.complete(prompt)
        assert reply.completion_tokens == len(reply.text.split()) and reply.prompt_tokens == len(prompt.split())
        lines = [line for line in reply.text.splitlines() if line.startswith("- ")]  # a preamble may come first
        assert len(lines) == 3 and all(line.endswith(".") for line in lines)
        assert llm.complete("Describe what a woolly mammoth looks like.").text == UNKNOWN_REPLY
        # deterministic per class and sample: the same request gets the same answer, another seed another one
        question = f"Describe what a {CLASSES[0]}, a type of creature, looks like."
        first = [llm.complete(question, seed=s).text for s in range(4)]
        assert first == [llm.complete(question, seed=s).text for s in range(4)] and len(set(first)) > 1


def test_oracle_rates_are_checked():
    with pytest.raises(ValueError, match="sum to at most 1"):
        Oracle(WORLD, generic_rate=0.7, wrong_rate=0.5)


# -- the commands ------------------------------------------------------------------------------------------

@pytest.fixture()
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("describe")(generate_cli.describe)
    app.command("synonyms")(generate_cli.synonyms)
    return app


def _shipped_prompt_files() -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(resource_dir("prompts").rglob("*")) if f.is_file()}


def test_describe_command_end_to_end_and_cached(cli, oracle_url, tmp_path):
    shipped = _shipped_prompt_files()
    runner = CliRunner()
    args = ["describe", "--dataset", "toyworld", "--llm", "oracle", "--base-url", oracle_url]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    # without --output the file goes under $ZSCLIP_HOME/generated/, never into the package's prompts/
    path = cache_root() / "generated" / "toyworld" / "descriptors_cbd_oracle.json"
    assert f"wrote {path}" in first.output and _shipped_prompt_files() == shipped
    descriptors = read_descriptor_file(path)
    assert list(descriptors) == WORLD.classnames and all(descriptors.values())
    assert "LLM: 100 calls, 0 cached" in first.output and "failed" not in first.output
    assert Record.read(provenance_path(path)).method["params"]["domain"] == "creature"  # from the dataset card

    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "LLM: 0 calls, 100 cached" in again.output
    assert read_descriptor_file(path) == descriptors

    out, meta = tmp_path / "cupl.json", tmp_path / "one-line-cupl.txt"
    meta.write_text("Describe what a {classname}, a type of {domain}, looks like.\n")
    cupl = runner.invoke(cli, [*args, "--prompt-style", "cupl", "--samples", "1", "--prompt-file", str(meta),
                               "--output", str(out)])
    assert cupl.exit_code == 0, cupl.output
    assert all(len(s) == 1 and name in s[0] for name, s in read_descriptor_file(out).items())
    assert Record.read(provenance_path(out)).method["params"]["meta_prompt"]["file"] == meta.name


def test_describe_contrastive_uses_the_training_split_confusions(cli, truthful_url, tmp_path, monkeypatch):
    seen: dict[str, Any] = {}

    def fake_confusions(dataset: Any, model: str | None, pretrained: str | None, k: int) -> dict[str, list[str]]:
        seen.update(model=model, k=k)
        names = dataset.classnames
        return {c: [names[(i + j) % len(names)] for j in range(1, k + 1)] for i, c in enumerate(names)}

    monkeypatch.setattr("zsclip.pipeline.zero_shot_confusions", fake_confusions)
    out = tmp_path / "contrastive.json"
    result = CliRunner().invoke(cli, ["describe", "-d", "toyworld", "--llm", "oracle", "--base-url", truthful_url,
                                      "--prompt-style", "contrastive", "--confusions", "2", "--model", "toyworld",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert seen == {"model": "toyworld", "k": 2}
    prov = Record.read(provenance_path(out))
    assert prov.method["name"] == "contrastive"
    assert prov.results["confusions"][WORLD.classnames[0]] == WORLD.classnames[1:3]
    assert len(read_descriptor_file(out)) == len(WORLD.classnames)


def test_synonyms_command_with_filter_and_errors(cli, oracle_url, tmp_path, monkeypatch):
    def fake_classifier(dataset: Any, encoder: Any):
        owner = {n: s.index for s in WORLD.species for n in (s.name, *s.synonyms)}
        return lambda texts: [owner.get(t.removeprefix("a photo of a "), -1) for t in texts]

    monkeypatch.setattr("zsclip.pipeline.clip_text_classifier", fake_classifier)
    out = tmp_path / "synonyms.json"
    runner = CliRunner()
    result = runner.invoke(cli, ["synonyms", "-d", "toyworld", "--llm", "oracle", "--base-url", oracle_url,
                                 "--filter", "--model", "toyworld", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "CLIP filter kept" in result.output and "LLM: 100 calls" in result.output
    data = json.loads(out.read_text())
    for s in WORLD.species:
        assert list(data[str(s.index)]["alternates"]) == [s.name, *s.synonyms]  # made-up ones filtered out
    assert Record.read(provenance_path(out)).results["clip_filter"]["model"] == "toyworld"

    budget = runner.invoke(cli, ["synonyms", "-d", "toyworld", "--llm", "oracle", "--base-url", oracle_url,
                                 "--refresh", "--max-calls", "3", "--output", str(tmp_path / "partial.json")])
    assert budget.exit_code == 2 and "budget reached: max_calls=3" in budget.output
    assert not (tmp_path / "partial.json").exists()
    bad = runner.invoke(cli, ["synonyms", "-d", "no-such-dataset", "--llm", "oracle", "--base-url", oracle_url])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output
    missing = runner.invoke(cli, ["describe", "-d", "toyworld", "--llm", "oracle", "--base-url", oracle_url,
                                  "--prompt-file", str(tmp_path / "none.txt")])
    assert missing.exit_code == 2 and "meta-prompt file not found" in missing.output


def test_meta_prompts_ship_with_their_placeholders():
    needs = {"cbd.txt": ["{classname}"], "cupl.txt": ["{classname}", "{domain}"],
             "contrastive.txt": ["{classname}", "{others}"], "synonyms.txt": ["{domain}", "{classname}"]}
    for name, needed in needs.items():
        text = Path(meta_prompt_path(name)).read_text()
        assert all(p in text for p in needed)
    assert all("{classname}" in line for line in meta_prompt_path("cupl.txt").read_text().splitlines() if line)


def test_synonyms_without_output_go_under_the_cache(cli, truthful_url):
    shipped = _shipped_prompt_files()
    result = CliRunner().invoke(cli, ["synonyms", "-d", "toyworld", "--llm", "oracle", "--base-url", truthful_url])
    assert result.exit_code == 0, result.output
    path = cache_root() / "generated" / "toyworld" / "synonyms_oracle.json"
    assert path.is_file() and f"wrote {path}" in result.output and _shipped_prompt_files() == shipped


@pytest.fixture()
def hanging_server() -> Iterator[ChatServer]:
    """An oracle that answers the first 5 requests and never the others (until the test ends)."""
    release = threading.Event()
    with ChatServer(hang_after(5, release, responder(Oracle(WORLD, 0.0, 0.0))), record=True) as server:
        try:
            yield server
        finally:
            release.set()


def test_describe_timeout_and_retries_options(cli, hanging_server):
    result = CliRunner().invoke(cli, ["describe", "-d", "toyworld", "--llm", "oracle", "--base-url",
                                      hanging_server.url, "--timeout", "0.3", "--retries", "1"])
    assert result.exit_code == 2
    assert "failed 2 times; last: no reply within the 0.3 s timeout" in result.output
    assert f"LLM oracle at {hanging_server.url}" in result.output  # says at once which server it asks


def test_ctrl_c_during_describe_stops_requests_at_once(hanging_server, tmp_path):
    """SIGINT while 4 requests hang: no request after the signal, the 5 answered replies are cached, exit."""
    command = [sys.executable, "-c", "from zsclip.cli import main; main()", "describe", "-d", "toyworld",
               "--llm", "oracle", "--base-url", hanging_server.url, "--output", str(tmp_path / "out.json")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                    os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # the client keeps 4 requests in flight: 5 answered + 4 hanging
            if hanging_server.received >= 9 or process.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        assert hanging_server.received == 9, process.poll()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    assert hanging_server.received == 9  # nothing was sent after the signal
    assert "interrupted: 5 of 100 requests had finished" in stderr and "Traceback" not in stderr
    assert len(LLMCache()) == 5 and not (tmp_path / "out.json").exists()


def test_llm_serve_says_its_process_id_and_how_to_stop_it():
    command = [sys.executable, "-c", "from zsclip.cli import main; main()", "world", "llm-serve", "--port", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                    os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stderr.readline() for _ in range(3)]
        assert f"process id {process.pid}" in lines[0] and f"kill {process.pid}" in lines[2]
        url = lines[0].split(" at ")[1].split(",")[0]
        with urllib.request.urlopen(url + "/models", timeout=10) as response:  # it serves where it says
            assert json.load(response)["data"][0]["id"] == "oracle"
        os.kill(process.pid, signal.SIGTERM)  # the printed stop command
        assert process.wait(timeout=30) == 0 and "stopped" in process.stderr.read()
    finally:
        process.kill()
