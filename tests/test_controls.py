"""The ensembling controls: WaffleCLIP random descriptors and CuPL sentences (METHODS.md §2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import make_cub_folder
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.datasets import get_dataset
from zsclip.methods import CuplPrompts, WafflePrompts
from zsclip.methods.waffle import clip_word_list
from zsclip.pipeline import aggregate_metrics


@pytest.fixture()
def cub(tmp_path):
    return get_dataset("cub", make_cub_folder(tmp_path / "cub", n_classes=4, images_per_class=6))


def test_waffle_shares_one_random_set_across_classes(cub):
    ps = WafflePrompts(count=5, n_words=2).build(cub, seed=3)
    assert ps.method == "waffle" and ps.aggregation == "mean"
    labels = [ps.labels[i] for i in range(len(ps.texts)) if ps.owners[i] == 0]
    assert len(labels) == 10  # 5 word + 5 character descriptors
    for c in range(1, 4):  # the same descriptors for every class, the class name swapped in
        assert [ps.labels[i] for i in range(len(ps.texts)) if ps.owners[i] == c] == labels
    first = ps.texts_of(0)[0]
    assert first.startswith("A photo of a Black-footed Albatross, which ") and first.endswith(".")
    length = ps.options["word_length"]
    words = set(clip_word_list())
    word_desc, char_desc = labels[0].split(), labels[1].split()
    assert all(len(w) <= length and any(v.startswith(w) for v in words) for w in word_desc)
    assert len(char_desc) == 2 and all(len(g) == length for g in char_desc)
    assert WafflePrompts(count=5).build(cub, seed=3).texts == ps.texts  # deterministic per seed
    assert WafflePrompts(count=5).build(cub, seed=4).texts != ps.texts


def test_waffle_mixed_keeps_a_third_real(cub):
    ps = WafflePrompts(count=6, mixed=True, descriptors="attributes").build(cub, seed=0)
    real = cub.attribute_descriptors()
    for c, name in enumerate(cub.classnames):
        labels = [ps.labels[i] for i in range(len(ps.texts)) if ps.owners[i] == c]
        assert len(labels) == 12
        assert sum(lab in real[name] for lab in labels) == min(len(real[name]), 4)


def test_cupl_uses_sentences_as_written(cub, tmp_path):
    f = tmp_path / "cupl.json"
    sentences = {name: [f"A {name} has feathers.", f"A {name} can fly."] for name in cub.classnames}
    sentences[cub.classnames[1]] = []
    f.write_text(json.dumps(sentences))
    ps = CuplPrompts(str(f)).build(cub)
    assert ps.aggregation == "prototype" and ps.texts_of(0) == sentences[cub.classnames[0]]
    assert ps.texts_of(1) == [f"a photo of a {cub.classnames[1]}."]


def test_aggregate_metrics_mean_and_std():
    per_seed = [{"num_images": 4, "num_classes": 2, "top1": v, "mean_per_class_recall": v,
                 "per_class_accuracy": {"a": v, "b": 0.0}} for v in (10.0, 20.0, 30.0)]
    m = aggregate_metrics(per_seed)
    assert m["top1"] == pytest.approx(20.0) and m["top1_std"] == pytest.approx(10.0)
    assert m["seeds"] == 3 and len(m["per_seed"]) == 3 and m["per_class_accuracy"]["a"] == pytest.approx(20.0)
    assert aggregate_metrics(per_seed[:1]) is per_seed[0]


def test_waffle_from_the_cli_reports_mean_and_std(cub, tiny_model, tmp_path):
    out = tmp_path / "w.json"
    res = CliRunner().invoke(app, ["classify", "-d", "cub", "--dataset-root", str(cub.root), "-m", "waffle",
                                   "--seeds", "3", "--count", "4", "--model", tiny_model["name"], "--pretrained",
                                   str(tiny_model["checkpoint"]), "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert m["seeds"] == 3 and len(m["per_seed"]) == 3 and "top1_std" in m
    assert m["top1"] == pytest.approx(np.mean([s["top1"] for s in m["per_seed"]]))
    assert record["options"]["seeds"] == [0, 1, 2] and "seed" not in record["options"]
    assert record["counts"]["texts"] == 3 * 4 * 8
    assert "±" in res.output
