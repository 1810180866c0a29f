"""The description audit: reassignment control, WaffleCLIP at the same count, discriminativeness ranking."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fixtures_data import make_folder_dataset
from typer.testing import CliRunner

from zsclip.audit import audit_descriptions, ranking_quality, reassign
from zsclip.cli import app
from zsclip.datasets import get_dataset

CLASSES = ("001.red_fox", "002.grey_wolf", "003.brown_bear", "004.snow_owl")


@pytest.fixture()
def folder(tmp_path):
    root = make_folder_dataset(tmp_path / "animals", classes=CLASSES, per_class=4)
    shutil.copytree(root / "test", root / "val")
    ds = get_dataset("folder", root)
    descriptors = {name: [f"{name} fur", "four legs", f"a {name.split()[0]} colour"] for name in ds.classnames}
    truth = {name: [{"descriptor": f"{name} fur", "kind": "true"}, {"descriptor": "four legs", "kind": "generic"},
                    {"descriptor": f"a {name.split()[0]} colour", "kind": "wrong"}] for name in ds.classnames}
    (tmp_path / "desc.json").write_text(json.dumps(descriptors))
    (tmp_path / "desc_truth.json").write_text(json.dumps(truth))
    return ds, tmp_path / "desc.json"


def test_reassignment_keeps_counts_and_the_pool():
    per_class = [[0, 1, 2], [3], [], [4, 5]]
    shuffled = reassign(per_class, np.random.default_rng(0))
    assert [len(x) for x in shuffled] == [3, 1, 0, 2]
    assert sorted(d for ids in shuffled for d in ids) == [0, 1, 2, 3, 4, 5]


def test_ranking_quality():
    disc = np.array([0.9, 0.8, 0.1, 0.5, -0.2])
    is_true = np.array([True, True, False, True, False])
    q = ranking_quality(disc, is_true)
    assert q["precision_at_num_true"] == pytest.approx(1.0) and q["auc_true_vs_rest"] == pytest.approx(1.0)
    q = ranking_quality(-disc, is_true)
    assert q["precision_at_num_true"] == pytest.approx(1 / 3) and q["auc_true_vs_rest"] == pytest.approx(0.0)


def test_audit_record(folder, tiny_encoder):
    ds, desc = folder
    record = audit_descriptions(ds, tiny_encoder, str(desc), seeds=3, oracle=True)
    cf = record["classname_free"]
    assert cf["real"]["weight"] in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    assert set(cf["real"]["weight_grid_val_top1"]) == {"0", "0.25", "0.5", "1", "2", "4", "8"}
    assert len(cf["reassigned"]["top1"]) == 2 and len(cf["reassigned"]["weights"]) == 3
    assert cf["real"]["oracle"]["label"].startswith("ORACLE")
    assert record["with_class_name"]["waffle_count"] == 4  # ~ the 3 descriptions per class, in pairs
    rows = record["discriminativeness"]
    assert len(rows) == 4 * 3 and rows == sorted(rows, key=lambda r: -r["discriminativeness"])
    assert {r["kind"] for r in rows} == {"true", "generic", "wrong"}  # read from desc_truth.json beside desc.json
    q = record["ranking_quality"]
    assert q["num_true"] == 4 and 0.0 <= q["auc_true_vs_rest"] <= 1.0
    generic = [r for r in rows if r["descriptor"] == "four legs"]
    # a description every class has separates nothing: its margins over the classes sum to zero
    assert len(generic) == 4 and sum(r["discriminativeness"] for r in generic) == pytest.approx(0.0, abs=1e-5)
    assert record["split"] == "test" and record["val_split"] == "val" and record["selection_split"] == "train"


def test_audit_cli_writes_record_and_plot(folder, tiny_model, tmp_path):
    ds, desc = folder
    out, png = tmp_path / "audit.json", tmp_path / "audit.png"
    res = CliRunner().invoke(app, ["audit-descriptions", "-d", "folder", "--dataset-root", str(ds.root),
                                   "--descriptors", str(desc), "--seeds", "2", "--model", tiny_model["name"],
                                   "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu",
                                   "-o", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "randomly reassigned" in res.output and "least discriminative" in res.output
    assert json.loads(out.read_text())["descriptors"] == str(desc)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
