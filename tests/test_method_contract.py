"""The shared method check (as scikit-learn's ``check_estimator``) over EVERY registered method, and the
record round trip: parameters recreate a run, fitting never reaches the evaluation split, the same seed gives
the same scores, ``--from-record`` reproduces metrics, bad parameters get one message form."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fixtures_data import make_cub_folder
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.context import RunContext, SplitRoleError
from zsclip.datasets import get_dataset
from zsclip.methods import Param, ParameterError, list_methods, make_method, method_class, parse_params
from zsclip.pipeline import classify, run_method
from zsclip.records import Record

runner = CliRunner()
METHODS = sorted(cls.name for cls in list_methods())
MESSAGE = re.compile(r"^the '(\w+)' parameter of (\S+) must be .+; got .+$")


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub_folder(tmp_path_factory.mktemp("contract") / "data", n_classes=5, images_per_class=8)


def fixture_params(name: str, ds) -> dict:
    """Parameters that make each method runnable on the 5-class CUB fixture (no shipped CuPL file for CUB)."""
    if name == "cupl":
        return {"sentences": {c: [f"A photo of a {c}, a bird.", f"{c} in the wild."] for c in ds.classnames}}
    if name == "waffle":
        return {"count": 3}
    if name == "dds":
        return {"k": 2, "m": 2}
    if name == "real-prompt":
        return {"corpus": _real_corpus(ds)}
    if name == "real-linear":
        return {"corpus": _real_corpus(ds), "n": 4, "steps": 15}
    return {}


_REAL_CORPORA: dict[tuple[str, ...], str] = {}


def _real_corpus(ds) -> str:
    """A small clip-retrieval corpus naming the fixture's classes, 32-d like the tiny model (made once)."""
    import tempfile
    from pathlib import Path

    from fixtures_real import make_clip_retrieval

    key = tuple(ds.classnames)
    if key not in _REAL_CORPORA:
        folder = Path(tempfile.mkdtemp(prefix="zsclip-real-contract-")) / "corpus"
        _REAL_CORPORA[key] = str(make_clip_retrieval(folder, ds.classnames, dim=32))
    return _REAL_CORPORA[key]


class SpyContext(RunContext):
    """A run context that remembers every role a method asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: list[tuple[str, str]] = []

    def split_of(self, role):
        self.asked.append((self.phase, role))
        return super().split_of(role)


def test_every_method_declares_and_documents_its_parameters():
    assert {"classnames", "descriptions", "waffle", "cupl", "dds"} <= set(METHODS)
    for name in METHODS:
        cls = method_class(name)
        assert cls.__doc__ and cls.kind in ("prompt", "fitted")
        for p in cls.param_names():
            assert isinstance(cls.parameters[p], Param) and cls.parameters[p].doc
        make_method(name).check_params()  # the defaults satisfy the declared constraints


@pytest.mark.parametrize("name", METHODS)
def test_parameters_round_trip_through_a_record(name, cub_root, tiny_encoder, tmp_path):
    ds = get_dataset("cub", cub_root)
    run = classify(ds, name, params=fixture_params(name, ds), model=tiny_encoder,
                   seeds=2 if method_class(name).randomised else None)
    path = run.record.write(tmp_path / "r.json")
    back = Record.read(path)
    rebuilt = make_method(name, **back.method["params"])
    assert json.loads(json.dumps(rebuilt.get_params(), default=list)) == back.method["params"]
    assert not set(back.fit_info) & set(back.method["params"])  # findings never mixed with parameters
    again = classify(ds, rebuilt, model=tiny_encoder, seeds=back.method["seeds"])
    assert again.metrics == run.metrics  # the same parameters and seeds recreate the same run


@pytest.mark.parametrize("name", METHODS)
def test_fitting_never_reaches_the_eval_role(name, cub_root, tiny_encoder):
    ds = get_dataset("cub", cub_root)
    method = make_method(name, **fixture_params(name, ds))
    ctx = SpyContext(ds, tiny_encoder)
    run_method(ctx, method)
    assert ("fit", "eval") not in ctx.asked
    with pytest.raises(SplitRoleError, match="cannot be read while fitting"):
        ctx.store("eval")
    if method.kind == "fitted" and getattr(method, "reads_splits", True):  # evaluated on its own fit split: refused
        with pytest.raises(SplitRoleError):
            run_method(RunContext(ds, tiny_encoder, eval_split="train"), make_method(name,
                                                                                    **fixture_params(name, ds)))


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_gives_the_same_scores(name, cub_root, tiny_encoder):
    ds = get_dataset("cub", cub_root)
    params = fixture_params(name, ds)
    if method_class(name).randomised:
        params["seed"] = 5
    ctx = RunContext(ds, tiny_encoder)
    a = run_method(ctx, make_method(name, **params)).classifiers[0]
    b = run_method(ctx, make_method(name, **params)).classifiers[0]
    with ctx.evaluating():
        emb = ctx.features("eval").embeddings
    np.testing.assert_array_equal(a.scores(emb), b.scores(emb))
    if method_class(name).randomised:
        other = run_method(ctx, make_method(name, **{**params, "seed": 6})).classifiers[0]
        assert not np.array_equal(a.scores(emb), other.scores(emb))


def _bad_value(param: Param):
    if param.choices:
        return "no-such-choice"
    if param.type is bool:
        return "maybe"
    if param.type in (int, float):
        return (param.low - 1) if param.low is not None else float("nan")
    if param.type == "floats":
        return [1.0, float("inf")]
    if param.type == "templates":
        return ""
    return 17  # str and source parameters reject a number


@pytest.mark.parametrize("name", METHODS)
def test_bad_parameter_values_get_one_message_form(name):
    cls = method_class(name)
    for p in cls.param_names():
        with pytest.raises(ParameterError) as exc:
            make_method(name, **{p: _bad_value(cls.parameters[p])})
        match = MESSAGE.match(str(exc.value))
        assert match and match.groups() == (p, name), str(exc.value)
    with pytest.raises(ParameterError, match=f"{name} has no parameter 'nope'"):
        parse_params(name, ["nope=1"])


@pytest.mark.parametrize("name", METHODS)
def test_from_record_reproduces_the_metrics(name, cub_root, tiny_model, tmp_path):
    ds = get_dataset("cub", cub_root)
    params = fixture_params(name, ds)
    if name == "cupl":
        sentences = tmp_path / "cupl.json"
        sentences.write_text(json.dumps(params["sentences"]))
        params = {"sentences": str(sentences)}
    out = tmp_path / "rec.json"
    args = ["classify", "-d", "cub", "--dataset-root", str(cub_root), "-m", name, "--model", tiny_model["name"],
            "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu", "-o", str(out)]
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    if method_class(name).randomised:
        args += ["--seeds", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["classify", "--from-record", str(out), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert "reproduced the record's metrics exactly" in again.output
    skipped = runner.invoke(app, [*args, "--skip-existing"])
    assert skipped.exit_code == 0 and "skipped:" in skipped.output


def test_from_record_reports_a_metric_that_does_not_reproduce(cub_root, tiny_model, tmp_path):
    out = tmp_path / "rec.json"
    res = runner.invoke(app, ["classify", "-d", "cub", "--dataset-root", str(cub_root), "--model", tiny_model["name"],
                              "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    data["metrics"]["top1"] += 1.0
    out.write_text(json.dumps(data))
    again = runner.invoke(app, ["classify", "--from-record", str(out), "--device", "cpu"])
    assert again.exit_code == 1 and "does NOT reproduce" in again.output


def test_explain_reproduces_dds_and_waffle_runs_with_non_default_parameters(cub_root, tiny_model, tmp_path):
    model = ["--model", tiny_model["name"], "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu"]
    base = ["-d", "cub", "--dataset-root", str(cub_root), *model]
    dds = runner.invoke(app, ["explain", *base, "-m", "dds", "-p", "k=2", "-p", "m=1", "-p", "weight=0.5",
                              "--image", "3", "--json"])
    assert dds.exit_code == 0, dds.output
    rows = json.loads(dds.output)["rows"]
    assert len({r["classname"] for r in rows}) == 2  # k = 2 candidates
    assert all(sum(1 for r in rows if r["classname"] == c) <= 1 for c in {r["classname"] for r in rows})  # m = 1
    waffle = runner.invoke(app, ["explain", *base, "-m", "waffle", "-p", "count=2", "-p", "seed=3", "--image", "0",
                                 "--json"])
    assert waffle.exit_code == 0, waffle.output
    wrows = json.loads(waffle.output)["rows"]
    predicted = [r for r in wrows if r["role"] == "predicted"]
    assert len(predicted) == 4  # 2 word + 2 character descriptors
    out = tmp_path / "w.json"
    run = runner.invoke(app, ["classify", *base, "-m", "waffle", "-p", "count=2", "-p", "seed=3", "--seeds", "1",
                              "-o", str(out)])
    assert run.exit_code == 0, run.output
    from_record = runner.invoke(app, ["explain", "--from-record", str(out), "--image", "0", "--json",
                                      "--device", "cpu"])
    assert from_record.exit_code == 0 and json.loads(from_record.output)["rows"] == wrows


def test_records_table_collects_records(cub_root, tiny_model, tmp_path):
    model = ["--model", tiny_model["name"], "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu"]
    for method in ("classnames", "descriptions"):
        res = runner.invoke(app, ["classify", "-d", "cub", "--dataset-root", str(cub_root), "-m", method, *model,
                                  "-o", str(tmp_path / "runs" / f"{method}.json")])
        assert res.exit_code == 0, res.output
    (tmp_path / "runs" / "notes.json").write_text('{"not": "a record"}')
    md = runner.invoke(app, ["records", "table", str(tmp_path / "runs")])
    assert md.exit_code == 0 and md.output.count("| classify | cub | test |") == 2
    csv_out = tmp_path / "t.csv"
    res = runner.invoke(app, ["records", "table", str(tmp_path / "runs"), "-o", str(csv_out)])
    assert res.exit_code == 0 and "2 records" in res.output
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("kind,dataset,split,model") and len(lines) == 3
    import pyarrow.parquet as pq

    pq_out = tmp_path / "t.parquet"
    assert runner.invoke(app, ["records", "table", str(tmp_path / "runs"), "-o", str(pq_out)]).exit_code == 0
    table = pq.read_table(pq_out)
    assert sorted(table.column("method").to_pylist()) == ["classnames", "descriptions"]
    expected = json.loads((tmp_path / "runs" / "classnames.json").read_text())["metrics"]["top1"]
    assert table.column("top1").to_pylist()[table.column("method").to_pylist().index("classnames")] == expected


def test_methods_commands_print_parameters_from_the_code():
    listing = runner.invoke(app, ["methods", "list"])
    assert listing.exit_code == 0 and all(m in listing.output for m in METHODS)
    show = runner.invoke(app, ["methods", "show", "dds"], terminal_width=200)
    assert show.exit_code == 0
    for p in method_class("dds").param_names():
        assert p in show.output
    assert "an int ≥ 1" in show.output and "pool-order" in show.output
    bad = runner.invoke(app, ["methods", "show", "nope"])
    assert bad.exit_code == 2 and "unknown method 'nope'" in bad.output
