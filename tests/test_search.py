"""Prompt-search jobs: the evaluator against numpy, ProAPO's operator counts, resuming after SIGKILL and after
a budget stop, the test split never touched by a search, and clear failures on bad inputs."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import class_image
from llm_server import ChatServer
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.datasets import Dataset, Sample
from zsclip.errors import ZsclipError
from zsclip.llm import LLMClient, RetryPolicy
from zsclip.records import Record
from zsclip.search.evaluate import ClassPromptEvaluator, FitnessWeights, TemplateSetEvaluator
from zsclip.search.hillclimb import check_pool, parse_templates
from zsclip.search.job import Budget, BudgetReached, Job, JobMismatchError, job_status, run_search
from zsclip.search.proapo import ProAPO, stage1_children, template_library
from zsclip.search.runner import prepare, run_hillclimb, run_proapo
from zsclip.world.template_oracle import STYLE_PHRASES, read_request, template_reply, words_to_avoid

runner = CliRunner()
CLASSES = ["red fox", "grey wolf", "brown bear", "snow owl", "sand cat", "blue jay"]
POOL = ["a photo of a {}.", "a drawing of a {}.", "a {} in the wild.", "a blurry photo of a {}.",
        "art of a {}.", "a close-up of the {}."]


# -- helpers ----------------------------------------------------------------------------------------------


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def direct_terms(x, y, w, scale, weights):
    """The fitness terms computed directly from class weights ``w``, in numpy."""
    s = x @ w.T
    true = s[np.arange(len(y)), y]
    rank = (s > true[:, None]).sum(1)
    z = s * scale
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = float((lse - true * scale).mean())
    r = float(np.linalg.norm(np.triu(w @ w.T - np.eye(len(w)))))
    top1, top5 = (rank == 0).mean() * 100, (rank < min(5, w.shape[0])).mean() * 100
    return top1, top5, ce, r, weights.top1 * top1 + weights.top5 * top5 + weights.r * r - weights.ce * ce


class SplitDataset(Dataset):
    """Six classes rendered in memory. Reading a test image raises, and so does asking for the test split's
    fingerprint (which building or opening its store needs); both are recorded in ``read``. (Counting the
    test samples for a store manifest's dataset summary reads no image and is allowed.)"""

    name = "search-test"
    splits = ("train", "val", "test")

    def __init__(self, test_raises: bool = True) -> None:
        super().__init__()
        self.classnames = list(CLASSES)
        self.test_raises = test_raises
        self.read: list[str] = []

    def _touch(self, split: str) -> None:
        self.read.append(split)
        if split == "test" and self.test_raises:
            raise AssertionError("a search read the test split")

    def split_fingerprint(self, split: str) -> str:
        self._touch(split)
        return super().split_fingerprint(split)

    def _load_split(self, split: str) -> list[Sample]:
        per = {"train": 3, "val": 2, "test": 2}[split]
        return [Sample(f"{split}/{c}/{k}", c) for c in range(len(self.classnames)) for k in range(per)]

    def load_image(self, sample: Sample):
        split, _, k = sample.path.split("/")
        self._touch(split)
        return class_image(sample.label, 32, random.Random(zlib.crc32(sample.path.encode()) % 1000))


def oracle_responder(body: dict) -> str:
    """The toy world's template responder behind a test chat server (deterministic in prompt and seed)."""
    prompt = body["messages"][-1]["content"]
    return template_reply(prompt, random.Random(f"{body.get('seed')}:{prompt}"))


def client(url: str, **kwargs) -> LLMClient:
    return LLMClient("stand-in", base_url=url, retry=RetryPolicy(max_retries=0), prices={}, **kwargs)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These arrays are tiny: on a busy 2-core machine, torch's thread team waiting for a descheduled thread
    costs more than the arithmetic (the benchmark measures the real sizes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def stand_in():
    with ChatServer(oracle_responder) as server:
        yield server


@pytest.fixture()
def setup(tiny_encoder):
    return prepare(SplitDataset(), tiny_encoder, shots=1, seed=1)


# -- the evaluator ----------------------------------------------------------------------------------------


def test_template_set_fitness_equals_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    c, d, n = 7, 16, 30
    x, y = unit(rng.standard_normal((n, d))), rng.integers(0, c, n)
    blocks = {f"t{i}": unit(rng.standard_normal((c, d))) for i in range(5)}
    for weights in (FitnessWeights(), FitnessWeights(1.0, 0.5, 0.2, 3.0)):
        ev = TemplateSetEvaluator(x, y, c, weights, logit_scale=50.0)
        for name, block in blocks.items():
            ev.add(name, block)
        for chosen in (["t3"], ["t3", "t1"], ["t0", "t2", "t4", "t1"]):
            got = ev.evaluate(chosen)
            want = direct_terms(x, y, unit(sum(blocks[t] for t in chosen)), 50.0, weights)
            assert [got.top1, got.top5] == pytest.approx(want[:2])
            assert [got.ce, got.r, got.fitness] == pytest.approx(want[2:], rel=1e-5)
        assert ev.evaluate(["t1", "t3"]) == ev.evaluate(["t3", "t1", "t3"])  # order and repeats do not matter
    blackbox = TemplateSetEvaluator(x, y, c, FitnessWeights.parse("blackbox"))
    blackbox.add("t0", blocks["t0"])
    terms = blackbox.evaluate(["t0"])
    assert terms.fitness == terms.top1 and np.isnan(terms.r)  # R is not computed when its weight is 0


def test_class_edits_recompute_only_edited_classes_and_match_a_full_evaluation():
    rng = np.random.default_rng(1)
    c, d, n = 9, 12, 27
    x, y = unit(rng.standard_normal((n, d))), rng.integers(0, c, n)
    items = [rng.standard_normal((4, d)).astype(np.float32) for _ in range(c)]
    base = [[0, 1] for _ in range(c)]
    ev = ClassPromptEvaluator(x, y, items, FitnessWeights(), 100.0)
    ev.set_base(base)
    edit = {2: [0, 3], 5: [1], 8: [0, 1, 2, 3]}
    after = [edit.get(k, base[k]) for k in range(c)]
    w = unit(np.stack([items[k][after[k]].sum(0) for k in range(c)]))
    got = ev.evaluate(edit)
    want = direct_terms(x, y, w, 100.0, FitnessWeights())
    assert [got.top1, got.top5] == pytest.approx(want[:2])
    assert [got.ce, got.r, got.fitness] == pytest.approx(want[2:], rel=1e-5)
    ev.commit(edit)
    assert ev.evaluate({}) == got and ev.base == [tuple(a) for a in after]


def test_fitness_option_parsing():
    assert FitnessWeights.parse("proapo") == FitnessWeights(0.1, 0.1, 0.05, 10.0)
    assert FitnessWeights.parse("w1=2,gamma=1") == FitnessWeights(2.0, 0.0, 0.0, 1.0)
    with pytest.raises(ZsclipError, match="--fitness"):
        FitnessWeights.parse("top7=1")


# -- ProAPO's operators -------------------------------------------------------------------------------------


def test_proapo_library_and_epoch_operator_counts():
    library = template_library(["bird"], base=["a photo of a {}.", "art of the {}."])
    assert library == ["a photo of a {}.", "a photo of a {}, a type of bird.", "a photo of a bird: {}.",
                       "a bird of a {}.", "a bird photo of a {}.", "art of the {}.",
                       "art of the {}, a type of bird.", "art of the bird: {}."]
    rng = np.random.default_rng(0)
    parents = [[0, 1, 2], [3, 4, 5], [1, 6, 7], [2, 8, 9]]
    children = stage1_children(parents, 30, epoch=3, rng=rng)
    ops = [op for op, _ in children]
    assert len(children) == 120
    assert {op: ops.count(op) for op in set(ops)} == {"add": 32, "remove": 32, "replace": 32, "mutation": 8,
                                                      "crossover": 16}
    assert all(len(s) == 5 for op, s in children if op == "mutation")  # size 2 + epoch
    small = stage1_children([[0, 1], [2, 3], [4, 5], [6, 7]], 30, epoch=0, rng=rng)
    assert "remove" not in {op for op, _ in small}  # only sets of more than 2 lose a template


def test_proapo_stage1_epochs_evaluate_at_most_120_distinct_sets(tmp_path):
    rng = np.random.default_rng(2)
    c, d = 6, 16
    x, y = unit(rng.standard_normal((12, d))), np.repeat(np.arange(c), 2)
    library = [f"template {i} of a {{}}." for i in range(40)]
    blocks = {t: unit(rng.standard_normal((c, d))) for t in [*library, "a photo of a {}."]}
    ev = TemplateSetEvaluator(x, y, c, FitnessWeights())
    search = ProAPO(library, CLASSES, ev, lambda ts: {t: blocks[t] for t in ts}, lambda ts: 0.0, epochs=4,
                    stage2=False, seed=3)
    job = Job.open("proapo", {"test": 1}, tmp_path / "job")
    outcome = run_search(job, search, Budget())
    assert outcome.finished
    rows = job.candidates()
    stage1 = [r for r in rows if r["stage"].startswith("stage 1")]
    for epoch in range(4):
        assert 0 < sum(r["stage"] == f"stage 1 epoch {epoch}" for r in rows) <= 120
    sets = [frozenset(json.loads(r["candidate"])) for r in stage1]
    assert len(sets) == len(set(sets))  # archive-wide dedupe
    assert outcome.state["evals"] == len(rows)


# -- resuming ---------------------------------------------------------------------------------------------


def _write_folder_dataset(root: Path) -> Path:
    for split, per in (("train", 3), ("val", 2), ("test", 2)):
        for label, name in enumerate(["001.red_fox", "002.grey_wolf", "003.brown_bear", "004.snow_owl"]):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per):
                class_image(label, 32, random.Random(f"{split}{k}")).save(folder / f"{k}.png")
    return root


def _cli(home: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "ZSCLIP_HOME": str(home), "ZSCLIP_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", "from zsclip.cli import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_job_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, tiny_model):
    from zsclip.datasets import get_dataset
    from zsclip.models import load_model

    root = _write_folder_dataset(tmp_path / "data")
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(POOL) + "\n")
    gate = threading.Event()
    asked: list[dict] = []

    def responder(body: dict) -> str:
        asked.append(body)
        if len(asked) >= 3:  # the first two replies come at once, the third waits for the kill
            gate.wait(timeout=60)
        return oracle_responder(body)

    home = tmp_path / "home"
    model = f"local-dir:{tiny_model['local_dir']}"
    with ChatServer(responder) as server:
        # the CLI, in a process of its own, is killed with SIGKILL while it waits for its 3rd LLM reply
        killed = _cli(home, ["search", "hillclimb", "--dataset", "folder", "--dataset-root", str(root), "--model",
                             model, "--templates", str(pool), "--llm", "stand-in", "--base-url", server.url,
                             "--iterations", "6", "--job-dir", str(tmp_path / "killed"), "--no-test"])
        deadline = time.time() + 240
        while len(asked) < 3 and time.time() < deadline and killed.poll() is None:
            time.sleep(0.05)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        gate.set()
        state = json.loads((tmp_path / "killed" / "state.json").read_text())
        assert state["step"] == 3 and state["status"] == "running"  # pool scored, 2 iterations committed

        setup = prepare(get_dataset("folder", root), load_model(model, None, device="cpu"), shots=1, seed=1)
        kwargs = dict(pool_source=str(pool), llm_model="stand-in", iterations=6, evaluate_test=False)
        # resumed with the killed run's LLM cache; the uninterrupted run with a cache of its own
        with client(server.url, cache=home / "llm-cache.sqlite") as llm:
            resumed = run_hillclimb(setup, POOL, llm=llm, job_dir=tmp_path / "killed", **kwargs)
        with client(server.url, cache=tmp_path / "fresh.sqlite") as llm:
            whole = run_hillclimb(setup, POOL, llm=llm, job_dir=tmp_path / "whole", **kwargs)

    assert resumed["chosen"] == whole["chosen"] and resumed["validation"] == whole["validation"]
    logs = [json.dumps(Job.open("hillclimb", json.loads((tmp_path / j / "params.json").read_text())["params"],
                                tmp_path / j).candidates()) for j in ("killed", "whole")]
    assert logs[0] == logs[1]
    assert (tmp_path / "killed" / "template.txt").read_text() == (tmp_path / "whole" / "template.txt").read_text()


def test_proapo_stopped_by_budgets_continues_to_the_uninterrupted_result(setup, tmp_path):
    library = template_library(["thing"], base=POOL)
    syn = [[c, f"{c.split()[1]}"] for c in CLASSES]
    descs = [[f"A {c} has fur.", f"The {c} is seen at night."] for c in CLASSES]
    kwargs = dict(library_source="test", epochs=2, synonyms=syn, synonyms_source="test", descriptions=descs,
                  descriptions_source="test", evaluate_test=False)
    whole = run_proapo(setup, library, job_dir=tmp_path / "whole", **kwargs)
    steps = 0
    for max_evals in (0, 60, 700, 10**6):
        try:
            part = run_proapo(setup, library, job_dir=tmp_path / "parts", budget=Budget(max_evals=max_evals), **kwargs)
            break
        except BudgetReached as exc:
            steps += 1
            assert "larger --max-evals" in str(exc)
            state = json.loads((tmp_path / "parts" / "state.json").read_text())
            assert state["evals"] <= max_evals and state["status"] in ("stopped", "running")
    total = whole["budget_spent"]["evaluations"]
    assert steps == sum(total > b for b in (0, 60, 700)) and steps >= 2  # each budget below the total stopped it
    assert part["chosen"] == whole["chosen"] and part["stage2"] == whole["stage2"]
    prompts = json.loads((tmp_path / "parts" / "prompts.json").read_text())
    assert prompts == json.loads((tmp_path / "whole" / "prompts.json").read_text()) and list(prompts) == CLASSES
    prov = Record.read(tmp_path / "parts" / "prompts.provenance.json")
    assert prov.kind == "search" and prov.counts["evaluations"] == whole["budget_spent"]["evaluations"]
    assert (tmp_path / "parts" / "templates.png").exists() and (tmp_path / "parts" / "prompts.png").exists()


# -- the test split ---------------------------------------------------------------------------------------


def test_searches_never_read_the_test_split(tiny_encoder, stand_in, tmp_path):
    ds = SplitDataset(test_raises=True)
    setup = prepare(ds, tiny_encoder, shots=1, seed=1)
    with client(stand_in.url) as llm:
        hc = run_hillclimb(setup, POOL, pool_source="test", llm=llm, llm_model="stand-in", iterations=3,
                           job_dir=tmp_path / "hc", evaluate_test=False)
    pa = run_proapo(setup, template_library(["thing"], base=POOL), library_source="test", epochs=1,
                    job_dir=tmp_path / "pa", evaluate_test=False)
    assert "test" not in ds.read and {"train", "val"} <= set(ds.read) and hc["chosen"] and pa["chosen"]
    for job in ("hc", "pa"):
        assert "test" not in json.loads((tmp_path / job / "result.json").read_text())
    # asked for the record, test is read once, after the result is written
    with pytest.raises(AssertionError, match="read the test split"):
        run_proapo(setup, template_library(["thing"], base=POOL), library_source="test", epochs=1,
                   job_dir=tmp_path / "pa", evaluate_test=True)
    assert json.loads((tmp_path / "pa" / "state.json").read_text())["status"] == "done"
    honest = SplitDataset(test_raises=False)
    done = run_proapo(prepare(honest, tiny_encoder), template_library(["thing"], base=POOL), library_source="test",
                      epochs=1, job_dir=tmp_path / "pa2")
    assert "top1" in done["test"] and honest.read.count("test") >= 1
    reads = len(honest.read)
    again = run_proapo(prepare(honest, tiny_encoder), template_library(["thing"], base=POOL),
                       library_source="test", epochs=1, job_dir=tmp_path / "pa2")
    assert again["test"] == done["test"] and honest.read[reads:].count("test") == 0  # evaluated once


# -- bad inputs -------------------------------------------------------------------------------------------


def test_template_pools_and_replies_are_checked():
    with pytest.raises(ZsclipError, match="no '\\{\\}'"):
        check_pool(["a photo of a {}.", "a photo of a dog."], "pool.txt")
    with pytest.raises(ZsclipError, match="empty"):
        check_pool(["", "  "], "pool.txt")
    assert parse_templates("Sure:\n- a {} here.\n- art of a {}.") == ["a {} here.", "art of a {}."]
    for bad in ("no list here", "- a {} here.\n- missing slot", "- a {name} here {}", "-a {}."):
        with pytest.raises(ValueError):
            parse_templates(bad)


def test_cli_bad_template_file_and_zero_budget_and_wrong_folder(tmp_path, tiny_model, stand_in):
    root = _write_folder_dataset(tmp_path / "data")
    base = ["search", "hillclimb", "--dataset", "folder", "--dataset-root", str(root), "--model",
            f"local-dir:{tiny_model['local_dir']}", "--llm", "stand-in", "--base-url", stand_in.url, "--no-test",
            "--iterations", "2"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a dog.\n")
    result = runner.invoke(app, [*base, "--templates", str(bad)])
    assert result.exit_code == 2 and "bad.txt" in result.output and "{}" in result.output
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(POOL) + "\n")
    job = tmp_path / "job"
    stopped = runner.invoke(app, [*base, "--templates", str(pool), "--job-dir", str(job), "--max-evals", "0"])
    assert stopped.exit_code == 3 and "--max-evals" in stopped.output and "again" in stopped.output
    assert job_status(job)["status"] == "running" and job_status(job)["evaluations"] == 0
    status = runner.invoke(app, ["search", "status", str(job)])
    assert status.exit_code == 0 and "hillclimb" in status.output and "0 evaluations" in status.output
    done = runner.invoke(app, [*base, "--templates", str(pool), "--job-dir", str(job)])
    assert done.exit_code == 0 and "chosen template" in done.output
    other = runner.invoke(app, [*base, "--templates", str(pool), "--job-dir", str(job), "--k", "2"])
    assert other.exit_code == 2 and "k: folder has 3, this run has 2" in other.output


def test_an_llm_that_never_answers_validly_ends_with_the_pool(setup, tmp_path):
    with ChatServer(lambda body: "I would rather not.") as server, client(server.url) as llm:
        result = run_hillclimb(setup, POOL, pool_source="test", llm=llm, llm_model="stand-in", iterations=2,
                               job_dir=tmp_path / "job", evaluate_test=False)
        assert len(server.requests) == 2 * 15  # 15 asks per iteration
    assert result["failed_iterations"] == 2 and result["chosen"][0] in POOL
    assert job_status(tmp_path / "job")["status"] == "done"


def test_llm_budget_stops_and_a_larger_one_continues(setup, stand_in, tmp_path):
    with client(stand_in.url) as llm:
        with pytest.raises(BudgetReached, match="max_calls"):
            run_hillclimb(setup, POOL, pool_source="test", llm=llm, llm_model="stand-in", iterations=4,
                          job_dir=tmp_path / "job", budget=Budget(max_calls=2), evaluate_test=False)
    state = job_status(tmp_path / "job")
    assert state["status"] == "stopped" and state["llm_calls"] == 2
    with client(stand_in.url) as llm:
        done = run_hillclimb(setup, POOL, pool_source="test", llm=llm, llm_model="stand-in", iterations=4,
                             job_dir=tmp_path / "job", budget=Budget(max_calls=50), evaluate_test=False)
    assert done["budget_spent"]["llm_calls"] >= 4
    with pytest.raises(JobMismatchError, match="iterations: folder has 4, this run has 5"):
        run_hillclimb(setup, POOL, pool_source="test", llm=None, llm_model="stand-in", iterations=5,
                      job_dir=tmp_path / "job", evaluate_test=False)


# -- the toy world's stand-in ---------------------------------------------------------------------------


def test_template_stand_in_varies_good_templates_and_avoids_bad_words():
    prompt = ("intro\n\nTemplates that worked well:\n- a sketch of a {}.\n- a pencil sketch of a {}.\n"
              "- a drawing of a {}.\n\nTemplates that worked badly, worst first:\n- a photo of a {}.\n"
              "- a close-up photo of a {}.\n- a picture of a {}.\n\nWrite 1 new template(s) that ...")
    good, bad, count = read_request(prompt)
    assert good == ["a sketch of a {}.", "a pencil sketch of a {}.", "a drawing of a {}."] and len(bad) == 3
    assert count == 1
    replies = [parse_templates(r) for r in (template_reply(prompt, random.Random(i), invalid_rate=0.0)
                                            for i in range(200))]
    flat = [t for r in replies for t in r]
    assert sum("photo" in t or "picture" in t for t in flat) < 0.25 * len(flat)
    assert sum(any(w in t for w in ("sketch", "drawing", "pencil")) for t in flat) > 0.6 * len(flat)
    invalid = 0
    for i in range(200):
        try:
            parse_templates(template_reply(prompt, random.Random(i), invalid_rate=0.3))
        except ValueError:
            invalid += 1
    assert 30 < invalid < 90


def test_template_stand_in_shown_the_bad_list_proposes_fewer_of_its_words_than_shown_the_good_list_alone():
    # the toy world's climbs always show the same bad list (the pool's worst: black-and-white photos, "itap of
    # my {}."); told about it the stand-in avoids "black and white" (only its noise answers still carry it), told
    # nothing it proposes such templates at its base rate; everything else about its answers is unchanged
    good = ["a rendition of a {}.", "a tattoo of a {}.", "a photo of a {}."]
    bad = ["a black and white photo of a {}.", "a black and white photo of the {}.", "itap of my {}."]
    good_block = "Templates that worked well:\n" + "".join(f"- {t}\n" for t in good)
    bad_block = "\nTemplates that worked badly, worst first:\n" + "".join(f"- {t}\n" for t in bad)
    ask = "\nWrite 1 new template(s)."

    def answers(prompt):
        return [t for i in range(600) for t in parse_templates(template_reply(prompt, random.Random(i),
                                                                              invalid_rate=0))]

    with_bad, good_only = answers(good_block + bad_block + ask), answers(good_block + ask)
    avoided = words_to_avoid(good, bad)
    assert avoided == {"black", "white", "itap", "my"}
    rate = {name: sum(bool(set(re.findall(r"[a-z]+", t)) & avoided) for t in flat) / len(flat)
            for name, flat in (("with bad", with_bad), ("good only", good_only))}
    assert rate["good only"] > 0.03 and rate["with bad"] < 0.02
    assert rate["with bad"] < rate["good only"] / 2
    sketches = {name: sum("sketch" in t and "black" not in t for t in flat) / len(flat)
                for name, flat in (("with bad", with_bad), ("good only", good_only))}
    assert abs(sketches["with bad"] - sketches["good only"]) < 0.03


def test_template_stand_in_swaps_the_medium_of_templates_without_a_known_style():
    # good templates whose medium the stand-in does not know still get their medium swapped, as an LLM would
    prompt = ("Templates that worked well:\n- a rendition of the {}.\n- the plushie {}.\n- a sculpture of the {}.\n"
              "\nWrite 1 new template.")
    flat = [t for i in range(200) for t in parse_templates(template_reply(prompt, random.Random(i), invalid_rate=0,
                                                                          noise_rate=0))]
    assert sum(any(p in t for p in STYLE_PHRASES) for t in flat) > 0.3 * len(flat)


def test_template_stand_in_blames_a_bad_templates_modifier_not_its_medium():
    # the worst template is a sketch made worse by "black and white": the stand-in keeps proposing sketches
    # (by its style swaps) but not black-and-white ones; a bad template with nothing but its medium (photo)
    # still steers away from that medium
    good = ["a cartoon of a {}.", "a painting of a {}.", "a picture of a {}."]
    bad = ["a black and white sketch of a {}.", "a photo of a {}.", "a {} on grass."]
    assert words_to_avoid(good, bad) == {"black", "white", "photo", "grass"}
    prompt = ("Templates that worked well:\n" + "".join(f"- {t}\n" for t in good) + "\nTemplates that worked "
              "badly, worst first:\n" + "".join(f"- {t}\n" for t in bad) + "\nWrite 1 new template.")
    flat = [t for i in range(300) for t in parse_templates(template_reply(prompt, random.Random(i), invalid_rate=0))]
    assert sum("sketch" in t for t in flat) >= 0.05 * len(flat)  # the old word rule avoided "sketch" too (2%)
    assert sum("black and white" in t or "grass" in t for t in flat) < 0.02 * len(flat)
