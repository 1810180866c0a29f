"""The description audit: reassignment control, w chosen on validation, WaffleCLIP at the same count,
discriminativeness ranking — on a folder dataset with distinct train, val and test images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import make_folder_dataset
from typer.testing import CliRunner

from zsclip.audit import DescriptionAudit, ranking_quality, reassign
from zsclip.cli import app
from zsclip.context import RunContext, SplitRoleError
from zsclip.datasets import get_dataset
from zsclip.prompts import format_template

CLASSES = ("001.red_fox", "002.grey_wolf", "003.brown_bear", "004.snow_owl")


@pytest.fixture()
def folder(tmp_path):
    root = make_folder_dataset(tmp_path / "animals", classes=CLASSES, per_class=4, val=True)
    ds = get_dataset("folder", root)
    descriptors = {name: [f"{name} fur", "four legs", f"a {name.split()[0]} colour"] for name in ds.classnames}
    truth = {name: [{"descriptor": f"{name} fur", "kind": "true"}, {"descriptor": "four legs", "kind": "generic"},
                    {"descriptor": f"a {name.split()[0]} colour", "kind": "wrong"}] for name in ds.classnames}
    (tmp_path / "desc.json").write_text(json.dumps(descriptors))
    (tmp_path / "desc_truth.json").write_text(json.dumps(truth))
    return ds, tmp_path / "desc.json"


def test_permute_reassignment_keeps_counts_and_the_pool():
    per_class = [[0, 1, 2], [3], [], [4, 5]]
    shuffled = reassign(per_class, 6, np.random.default_rng(0), "permute")
    assert [len(x) for x in shuffled] == [3, 1, 0, 2]
    assert sorted(d for ids in shuffled for d in ids) == [0, 1, 2, 3, 4, 5]
    assert shuffled != per_class


def test_draw_reassignment_samples_the_pool_with_replacement():
    """The authors' control: each class draws its count uniformly from the whole pool, duplicates collapse."""
    per_class = [[0, 1, 2, 3, 4, 5, 6, 7]] + [[i] for i in range(8, 40)]
    draws = [reassign(per_class, 40, np.random.default_rng(s)) for s in range(20)]
    first = [d[0] for d in draws]
    assert all(len(ids) == len(set(ids)) and 1 <= len(ids) <= 8 for ids in first)  # collapsed duplicates
    assert any(len(ids) < 8 for ids in first)  # with replacement: some draws repeat
    assert any(i >= 8 for ids in first for i in ids)  # from the whole pool, not the class's own
    assert all(len(d[5]) == 1 for d in draws) and len({d[5][0] for d in draws}) > 5
    assert reassign(per_class, 40, np.random.default_rng(3)) == reassign(per_class, 40, np.random.default_rng(3))


def test_ranking_quality():
    disc = np.array([0.9, 0.8, 0.1, 0.5, -0.2])
    is_true = np.array([True, True, False, True, False])
    q = ranking_quality(disc, is_true)
    assert q["precision_at_num_true"] == pytest.approx(1.0) and q["auc_true_vs_rest"] == pytest.approx(1.0)
    assert (q["num_true"], q["num_other"]) == (3, 2)
    q = ranking_quality(-disc, is_true)
    assert q["precision_at_num_true"] == pytest.approx(1 / 3) and q["auc_true_vs_rest"] == pytest.approx(0.0)


def test_audit_record(folder, tiny_encoder):
    ds, desc = folder
    audit = DescriptionAudit(descriptors=str(desc), seeds=3, oracle=True)
    ctx = RunContext(ds, tiny_encoder)
    record = audit.run(ctx)
    res = record.results
    cf = res["classname_free"]
    assert res["splits"] == {"eval": "test", "choose": "val", "fit": "train"}
    # w is chosen on the validation images: recompute the grid from the val store directly
    val = ctx.features("choose")
    cache = ctx.text_cache
    pool = sorted({d for ds_ in json.loads(desc.read_text()).values() for d in ds_})
    emb = dict(zip(pool, cache.encode(pool)))
    own = json.loads(desc.read_text())
    means = np.stack([np.mean([emb[d] for d in own[c]], axis=0) for c in ds.classnames])
    names = cache.encode([format_template("a photo of a {}.", c) for c in ds.classnames])
    for w, top1 in cf["real"]["weight_grid_val_top1"].items():
        scores = float(w) * (val.embeddings @ names.T) + val.embeddings @ means.T
        assert top1 == pytest.approx(100 * float((scores.argmax(1) == val.labels).mean()))
    best = max(cf["real"]["weight_grid_val_top1"].items(), key=lambda kv: (kv[1], -float(kv[0])))
    assert cf["real"]["weight"] == float(best[0])
    with ctx.evaluating():  # the reported top-1s: that w on the test images, and w = 0
        test = ctx.features("eval")
    for w, key in ((cf["real"]["weight"], "top1"), (0.0, "descriptions_only_top1")):
        scores = w * (test.embeddings @ names.T) + test.embeddings @ means.T
        assert cf["real"][key] == pytest.approx(100 * float((scores.argmax(1) == test.labels).mean()))
    assert res["class_name_only_top1"] == pytest.approx(
        100 * float(((test.embeddings @ names.T).argmax(1) == test.labels).mean()))
    test_top1 = {w: 100 * float(((w * (test.embeddings @ names.T) + test.embeddings @ means.T).argmax(1)
                                 == test.labels).mean()) for w in audit.weight_grid}
    oracle_w = max(audit.weight_grid, key=lambda w: (test_top1[w], -w))
    assert (cf["real"]["oracle"]["weight"], cf["real"]["oracle"]["top1"]) == (oracle_w, pytest.approx(
        test_top1[oracle_w]))
    # discriminativeness from S[d, c] = e(d) · mean of class c's fit images, and the own class's rank in S[d]
    fit = ctx.features("fit")
    fit_means = np.stack([fit.embeddings[fit.labels == c].mean(0) for c in range(len(ds.classnames))])
    for r in res["discriminativeness"]:
        c = ds.classnames.index(r["class"])
        s_d = emb[r["descriptor"]] @ fit_means.T
        assert r["discriminativeness"] == pytest.approx(s_d[c] - np.delete(s_d, c).mean(), abs=1e-5)
        assert r["rank_of_own_class"] == 1 + int((s_d > s_d[c] + 1e-6).sum())
    assert len(cf["reassigned"]["top1"]) == 2 and len(cf["reassigned"]["weights"]) == 3
    assert cf["real"]["oracle"]["label"].startswith("ORACLE: w chosen on the test split")
    assert res["with_class_name"]["waffle_count"] == 4  # ~ the 3 descriptions per class, in pairs
    rows = res["discriminativeness"]
    assert len(rows) == 4 * 3 and rows == sorted(rows, key=lambda r: -r["discriminativeness"])
    assert {r["kind"] for r in rows} == {"true", "generic", "wrong"}  # read from desc_truth.json beside desc.json
    assert res["ranking_quality"]["num_true"] == 4
    generic = [r for r in rows if r["descriptor"] == "four legs"]
    # a description every class has separates nothing: its margins over the classes sum to zero
    assert len(generic) == 4 and sum(r["discriminativeness"] for r in generic) == pytest.approx(0.0, abs=1e-5)
    assert record.kind == "audit" and record.method["params"]["reassignment"] == "draw"


def test_audit_never_chooses_on_the_split_it_reports(folder, tiny_encoder):
    ds, desc = folder
    with pytest.raises(SplitRoleError, match="'choose' role's split 'val' is the split this run evaluates on"):
        DescriptionAudit(descriptors=str(desc), seeds=1).run(RunContext(ds, tiny_encoder, eval_split="val"))


def test_audit_cli_writes_record_and_plot(folder, tiny_model, tmp_path):
    ds, desc = folder
    out, png = tmp_path / "audit.json", tmp_path / "audit.png"
    res = CliRunner().invoke(app, ["audit-descriptions", "-d", "folder", "--dataset-root", str(ds.root),
                                   "-p", f"descriptors={desc}", "-p", "seeds=2", "-p", "reassignment=permute",
                                   "--model", tiny_model["name"], "--pretrained", str(tiny_model["checkpoint"]),
                                   "--device", "cpu", "-o", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "randomly reassigned (permute, 2 seeds)" in res.output and "least discriminative" in res.output
    saved = json.loads(out.read_text())
    assert saved["results"]["descriptors"] == str(desc) and saved["method"]["params"]["seeds"] == 2
    from PIL import Image

    with Image.open(png) as img:
        assert img.size[0] > 600 and img.size[1] > 200
        colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    # one colour per kind of description from the truth file (matplotlib's tab:green, tab:grey, tab:red)
    assert {(44, 160, 44), (127, 127, 127), (214, 39, 40)} <= colours
    bad = CliRunner().invoke(app, ["audit-descriptions", "-d", "folder", "--dataset-root", str(ds.root),
                                   "-p", "reassignment=shuffle"])
    assert bad.exit_code == 2 and "'reassignment' parameter of audit-descriptions must be one of draw, permute" \
        in bad.output


@pytest.mark.parametrize("mode", ["draw", "permute"])
def test_the_reassigned_control_scores_reassigned_descriptions(folder, tiny_encoder, monkeypatch, mode):
    """The control scores each seed's reassignment (not the real assignment again), and the reported mean ± std
    and weights are those of the reassigned runs."""
    import zsclip.audit as audit_mod
    from zsclip.methods.pool import DescriptionPool

    ds, desc = folder
    scored = []
    real_class_means = audit_mod._class_means

    def spy(emb, assign, dim):
        scored.append([list(ids) for ids in assign])
        return real_class_means(emb, assign, dim)

    monkeypatch.setattr(audit_mod, "_class_means", spy)
    record = DescriptionAudit(descriptors=str(desc), seeds=3, reassignment=mode).run(RunContext(ds, tiny_encoder))
    own = json.loads(desc.read_text())
    pool = DescriptionPool.from_lists([own[c] for c in ds.classnames])
    per_class = [list(ids) for ids in pool.own]
    expected = [reassign(per_class, len(pool.texts), np.random.default_rng(s), mode) for s in range(3)]
    for e in expected:  # every seed really moves descriptions
        assert any(set(got) != set(mine) for got, mine in zip(e, per_class))
    assert scored == [per_class, *expected]
    # the reported numbers are those of the reassigned runs, recomputed here from the expected assignments
    ctx = RunContext(ds, tiny_encoder)
    val = ctx.features("choose")
    with ctx.evaluating():
        test = ctx.features("eval")
    pool_emb = tiny_encoder.encode_texts(list(pool.texts))
    names = tiny_encoder.encode_texts([format_template("a photo of a {}.", c) for c in ds.classnames])
    weights, top1s = [], []
    for assign in expected:
        means = np.stack([pool_emb[ids].mean(axis=0) for ids in assign])
        top1 = {w: [100 * float(((w * v.embeddings @ names.T + v.embeddings @ means.T).argmax(1) == v.labels).mean())
                    for v in (val, test)] for w in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)}
        w = max(top1, key=lambda w: (top1[w][0], -w))
        weights.append(w)
        top1s.append(top1[w][1])
    cf = record.results["classname_free"]["reassigned"]
    assert cf["weights"] == weights
    assert cf["top1"] == pytest.approx([np.mean(top1s), np.std(top1s)], abs=1e-6)


def test_the_plot_draws_each_description_at_its_value_in_its_kinds_colour(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import matplotlib.colors as mcolors
    from matplotlib.figure import Figure

    from zsclip.audit import plot_discriminativeness

    rows = [{"discriminativeness": v, "kind": k} for v, k in
            [(0.5, "true"), (0.3, "wrong"), (0.2, "true"), (-0.1, "generic"), (-0.4, "other")]]
    record = SimpleNamespace(results={"discriminativeness": rows, "splits": {"fit": "train"}},
                             dataset={"name": "animals"})
    figures = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k)))
    plot_discriminativeness(record, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figures[0].axes[0]
    drawn = {}
    for points in ax.collections:
        colour = mcolors.to_hex(points.get_facecolor()[0])
        drawn[points.get_label()] = (colour, points.get_offsets().tolist())
    assert drawn == {"true": (mcolors.to_hex("tab:green"), [[0, 0.5], [2, 0.2]]),
                     "wrong": (mcolors.to_hex("tab:red"), [[1, 0.3]]),
                     "generic": (mcolors.to_hex("tab:grey"), [[3, -0.1]]),
                     "other": (mcolors.to_hex("tab:blue"), [[4, -0.4]])}  # an unknown kind: blue
    assert "animals" in ax.get_title() and "train split" in ax.get_title()
