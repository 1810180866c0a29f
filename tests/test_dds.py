"""DDS (METHODS.md §3): the vectorised selection against a direct per-image loop, fitting rules, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import make_cub_folder
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.context import RunContext, SplitRoleError
from zsclip.datasets import get_dataset
from zsclip.methods.dds import DDS, DDSClassifier, DescriptionPool, select, selection_means
from zsclip.scoring import evaluate


def naive_select(S, hood, own, m):
    """METHODS.md §3 step 4, written as a loop over candidates and descriptions."""
    out = []
    for c in hood:
        keep = [d for d in range(S.shape[0]) if all(S[d, c] >= S[d, j] for j in hood)]
        ranked = sorted(keep, key=lambda d: -sum(S[d, c] - S[d, j] for j in hood) / len(hood))
        out.append(ranked[:m] if ranked else list(own[c][:m]))
    return out


@pytest.mark.parametrize("pool", [40, 300])
def test_selection_matches_the_direct_loop(pool):
    rng = np.random.default_rng(0)
    classes, k, m = 12, 3, 5
    S = rng.normal(size=(pool, classes)).astype(np.float32)
    S[:, 7] = -5  # class 7 never wins a description: it falls back to its own first m
    # class 3 wins only descriptions 0-19, by a hair: none is in the short list of the best-ranked ones
    S[:, 3] = -5
    S[:20, 1] = S[:20, 0]
    S[:20, 3] = S[:20, 0] + 1e-3 * np.arange(1, 21)
    own = [tuple(rng.choice(pool, size=4, replace=False)) for _ in range(classes)]
    own_first = np.full((classes, m), -1)
    own_count = np.zeros(classes, dtype=int)
    for c, ids in enumerate(own):
        own_first[c, : len(ids)] = ids
        own_count[c] = len(ids)
    hoods = np.array([rng.choice(classes, size=k, replace=False) for _ in range(30)] + [[7, 1, 2], [3, 0, 1]])
    chosen, counts = select(np.ascontiguousarray(S.T), hoods, own_first, own_count, m)
    for i, hood in enumerate(hoods):
        expected = naive_select(S, hood, own, m)
        for a in range(k):
            got = [int(d) for d in chosen[i, a] if d >= 0]
            assert got == expected[a], (i, a)
            assert counts[i, a] == len(expected[a])
    assert [int(d) for d in chosen[-2, 0] if d >= 0] == list(own[7])
    assert counts[-1, 0] == 5 and list(chosen[-1, 0]) == [19, 18, 17, 16, 15]


def _classifier(rng, form="classname-free", weight=1.0):
    classes, pool, dim = 6, 15, 8
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    pool_emb = unit(rng.normal(size=(pool, dim))).astype(np.float32)
    means = unit(rng.normal(size=(classes, dim))).astype(np.float32)
    names = unit(rng.normal(size=(classes, dim))).astype(np.float32)
    own = [[f"d{j}" for j in range(c, pool, classes)] for c in range(classes)]
    desc_pool = DescriptionPool.from_lists(own)
    order = [int(t[1:]) for t in desc_pool.texts]
    pool_emb = pool_emb[order]
    clf = DDSClassifier(classnames=[f"c{i}" for i in range(classes)], pool=desc_pool, S=pool_emb @ means.T,
                        name_emb=names, pool_emb=pool_emb, k=3, m=2, form=form, aggregation="mean", weight=weight,
                        template="a photo of a {}.", cache=None)
    return clf, unit(rng.normal(size=(20, dim))).astype(np.float32)


def test_classname_free_scores_match_the_formula():
    rng = np.random.default_rng(1)
    clf, images = _classifier(rng, weight=0.5)
    scores = clf.scores(images)
    hoods, chosen, counts = clf.selections(images)
    for i, v in enumerate(images):
        name_scores = clf.name_emb @ v
        assert set(np.argsort(-name_scores)[:3]) == set(hoods[i])
        for a, c in enumerate(hoods[i]):
            picked = [d for d in chosen[i, a] if d >= 0]
            expected = 0.5 * name_scores[c] + np.mean(clf.pool_emb[picked] @ v)
            assert scores[i, c] == pytest.approx(expected + 10.0, abs=1e-5)
        outside = [c for c in range(6) if c not in hoods[i]]
        np.testing.assert_allclose(scores[i, outside], name_scores[outside], atol=1e-6)
        assert scores[i].argmax() in hoods[i]


def test_dds_fits_on_train_and_chooses_on_val_never_on_test(tmp_path, tiny_encoder):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=3))
    ctx = RunContext(ds, tiny_encoder)
    dds = DDS(descriptors="attributes").fit(ctx)
    assert dds.fit_info_["selection_split"] == "train" and dds.fit_info_["weight_chosen_on"] == "val"
    assert set(ctx.encoded) == {"train", "val"}  # the test store was never built
    with pytest.raises(SplitRoleError, match="'fit' role's split 'train' is the split this run evaluates on"):
        DDS(descriptors="attributes").fit(RunContext(ds, tiny_encoder, eval_split="train"))


def _cli_args(root, tiny_model, desc, out):
    return ["classify", "-d", "cub", "--dataset-root", str(root), "-m", "dds", "-p", f"descriptors={desc}",
            "--model", tiny_model["name"], "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu",
            "-p", "weight=1", "-p", "k=3", "-p", "m=2", "-o", str(out)]


def test_dds_from_the_cli_records_its_splits(tmp_path, tiny_model):
    root = make_cub_folder(tmp_path / "cub", n_classes=5, images_per_class=6)
    desc = tmp_path / "d.json"
    names = get_dataset("cub", root).classnames
    desc.write_text(json.dumps({n: [f"feature {i}", f"shared {i % 2}", "a bird"] for i, n in enumerate(names)}))
    out = tmp_path / "dds.json"
    args = _cli_args(root, tiny_model, desc, out)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    params, info = record["method"]["params"], record["fit_info"]
    assert record["counts"]["images_encoded"] == {"train": 10, "test": 14}  # w given: no val split needed
    assert "encoded this run: images train 10, test 14 (24 in all)" in res.output
    assert info["selection_split"] == "train" and params["k"] == 3 and params["m"] == 2
    assert info["pool_size"] == 5 + 2 + 1 and info["n_per_class"] == 2 and info["weight_used"] == 1.0
    assert "pool_size" not in params and "weight_chosen_on" not in params
    res = CliRunner().invoke(app, [*args, "-p", "form=classname", "-p", "aggregation=max"])
    assert res.exit_code == 0, res.output


class _FakeCache:
    """A text cache stand-in: a fixed random unit vector per text, and the texts it was asked for."""

    def __init__(self, dim):
        self.dim, self.vectors, self.asked = dim, {}, []

    def encode(self, texts):
        self.asked += list(texts)
        for t in texts:
            if t not in self.vectors:
                v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim)
                self.vectors[t] = (v / np.linalg.norm(v)).astype(np.float32)
        return np.stack([self.vectors[t] for t in texts])


def test_fallback_uses_pool_order_as_the_authors_pool_is_built():
    """Pool = each class's list sorted, classes in order: class 1's own ("beta", "alpha") are pool ids (2, 0)."""
    pool = DescriptionPool.from_lists([["zeta", "alpha"], ["beta", "alpha"]], "sorted")
    assert pool.texts == ("alpha", "zeta", "beta") and pool.own[1] == (2, 0)
    kwargs = dict(classnames=["a", "b"], pool=pool, S=np.zeros((3, 2)), name_emb=np.eye(2, 4), pool_emb=None, k=2,
                  m=1, form="classname-free", aggregation="mean", weight=1.0, template="{}", cache=None)
    assert DDSClassifier(**kwargs)._own_first[1].tolist() == [0]  # "alpha": first in pool order
    assert DDSClassifier(**kwargs, fallback="file-order")._own_first[1].tolist() == [2]  # "beta": first in the file


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_classname_form_texts_padding_and_aggregation(aggregation):
    """'A photo of a {c}, {d}.' per selected description; a selection shorter than m counts as the authors pad it:
    cyclically to m before the mean (m=5, 3 selected → weights 2, 2, 1 out of 5)."""
    rng = np.random.default_rng(4)
    classes, dim = 4, 6
    own = [[f"c{c} d{j}" for j in range(3)] for c in range(classes)]  # 3 descriptions each, m = 5
    pool = DescriptionPool.from_lists(own)
    cache = _FakeCache(dim)
    names = cache.encode([f"name {c}" for c in range(classes)])
    S = np.full((len(pool), classes), -1.0)
    for c, ids in enumerate(pool.own):
        S[list(ids), c] = 1.0  # each description qualifies for its own class only
    clf = DDSClassifier(classnames=[f"c{c}" for c in range(classes)], pool=pool, S=S, name_emb=names, pool_emb=None,
                        k=classes, m=5, form="classname", aggregation=aggregation, weight=1.0, template="{}",
                        cache=cache)
    images = rng.normal(size=(5, dim)).astype(np.float32)
    scores = clf.scores(images)
    hoods, chosen, counts = clf.selections(images)
    for i, v in enumerate(images):
        for a, c in enumerate(hoods[i]):
            picked = [int(d) for d in chosen[i, a] if d >= 0]
            assert len(picked) == 3 == counts[i, a]
            sims = [cache.vectors[f"A photo of a c{c}, {pool.texts[d]}."] @ v for d in picked]
            if aggregation == "max":
                expected = max(sims)
            else:
                expected = np.mean([sims[j % 3] for j in range(5)])
            assert scores[i, c] == pytest.approx(expected + 10.0, abs=1e-5)
    assert all(t.startswith("A photo of a c") for t in cache.asked[classes:])


def test_classname_free_averages_only_the_selected_descriptions():
    """Fewer than m qualify: the mean is over those selected, not over m."""
    rng = np.random.default_rng(2)
    clf, images = _classifier(rng, weight=0.0)
    clf.m = 4
    hoods, chosen, counts = clf.selections(images)
    scores = clf.scores(images)
    some_short = False
    for i, v in enumerate(images):
        for a, c in enumerate(hoods[i]):
            picked = [d for d in chosen[i, a] if d >= 0]
            some_short |= 0 < len(picked) < 4
            assert scores[i, c] == pytest.approx(np.mean(clf.pool_emb[picked] @ v) + 10.0, abs=1e-5)
    assert some_short


# -- pinned at the method / pipeline level: what reaches the classifier, and what it is fitted on --------------

@pytest.fixture()
def cub_with_descriptions(tmp_path):
    """A CUB fixture with 3 descriptions per class (so m=5 selections are short and padded) and distinct splits."""
    root = make_cub_folder(tmp_path / "cub", n_classes=5, images_per_class=8)
    ds = get_dataset("cub", root)
    desc = {n: [f"feature {i}", f"pattern {i % 2}", "a bird"] for i, n in enumerate(ds.classnames)}
    return ds, desc


def test_classname_form_mean_and_max_reach_the_scores_through_the_pipeline(cub_with_descriptions, tiny_encoder):
    """`classify(..., form=classname, aggregation=max|mean)`: each candidate's score is the max / the padded mean
    of v·e("A photo of a {c}, {d}.") over its selected descriptions, the texts encoded here directly."""
    from zsclip.pipeline import classify

    ds, desc = cub_with_descriptions
    by_aggregation = {}
    for aggregation in ("mean", "max"):
        run = classify(ds, "dds", params={"descriptors": desc, "form": "classname", "aggregation": aggregation,
                                          "k": 3, "m": 5}, model=tiny_encoder)
        assert run.record.method["params"]["aggregation"] == aggregation
        clf = run.classifier.classifier_
        v_all = np.asarray(run.store.embeddings, dtype=np.float32)
        hoods, chosen, counts = clf.selections(v_all)
        for i, v in enumerate(v_all):
            for a, c in enumerate(hoods[i]):
                picked = [int(d) for d in chosen[i, a] if d >= 0]
                texts = [f"A photo of a {ds.classnames[c]}, {clf.pool.texts[d]}." for d in picked]
                sims = tiny_encoder.encode_texts(texts) @ v
                expected = sims.max() if aggregation == "max" else np.mean([sims[j % len(sims)] for j in range(5)])
                assert run.scores[i, c] == pytest.approx(expected + 10.0, abs=1e-4)
        assert (counts < 5).any()  # some selections were padded
        by_aggregation[aggregation] = run.scores
    assert not np.allclose(by_aggregation["mean"], by_aggregation["max"])


def test_selection_means_use_the_first_n_images_of_each_class_in_store_order():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 0])
    emb = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], dtype=np.float32)
    means, n = selection_means(emb, labels, 3, 2)
    assert n == 2
    np.testing.assert_allclose(means[:, 0], [(1 + 3) / 2, (2 + 5) / 2, (0 + 4) / 2])
    means, n = selection_means(emb, labels, 3, 1000)  # n is cut to the smallest class (3 images)
    assert n == 3
    np.testing.assert_allclose(means[:, 0], [(1 + 3 + 6) / 3, (2 + 5 + 8) / 3, (0 + 4 + 7) / 3])


def test_dds_fits_s_on_the_first_n_fit_images_and_w_on_the_choose_role(cub_with_descriptions, tiny_encoder,
                                                                      monkeypatch):
    """S is the pool's cosine with the mean of each class's first n fit images; each w of the grid is scored on the
    choose role's images (and only those), and the best (ties: the smaller w) is used."""
    import zsclip.methods.dds as dds_mod

    ds, desc = cub_with_descriptions
    ctx = RunContext(ds, tiny_encoder)
    scored_labels = []

    def spy(scores, labels, classnames):
        scored_labels.append(np.asarray(labels).tolist())
        return evaluate(scores, labels, classnames)

    monkeypatch.setattr(dds_mod, "evaluate", spy)
    dds = DDS(descriptors=desc, n=2, weight_grid=(8.0, 0.0, 1.0, 0.5)).fit(ctx)
    val_rows = ctx.features("choose").labels.tolist()
    assert len(val_rows) != len(ctx.features("fit").labels)  # the two roles are told apart by their size
    assert scored_labels == [val_rows] * 4
    clf = dds.classifier_
    fit = ctx.features("fit")
    first_two = np.stack([fit.embeddings[np.flatnonzero(fit.labels == c)[:2]].mean(axis=0)
                          for c in range(len(ds.classnames))])
    pool_emb = tiny_encoder.encode_texts(list(clf.pool.texts))
    np.testing.assert_allclose(clf.S_T, (pool_emb @ first_two.T).T, atol=1e-5)
    assert dds.fit_info_["n_per_class"] == 2
    val = ctx.features("choose")
    grid = dds.fit_info_["weight_grid_top1"]
    for w, top1 in grid.items():
        clf.weight = float(w)
        assert top1 == pytest.approx(100 * float((clf.scores(val.embeddings).argmax(1) == val.labels).mean()))
    best = max(grid, key=lambda w: (grid[w], -float(w)))
    assert dds.fit_info_["weight_used"] == float(best)


def test_the_weight_tie_goes_to_the_smaller_w(cub_with_descriptions, tiny_encoder, monkeypatch):
    from zsclip.scoring import choose_on_validation

    assert choose_on_validation([4.0, 0.5, 2.0, 1.0], lambda w: 50.0) == (0.5, {"4": 50.0, "0.5": 50.0, "2": 50.0,
                                                                              "1": 50.0})
    assert choose_on_validation([4.0, 0.5, 2.0], lambda w: 60.0 if w >= 2 else 40.0)[0] == 2.0
    import zsclip.methods.dds as dds_mod

    ds, desc = cub_with_descriptions
    monkeypatch.setattr(dds_mod, "evaluate", lambda *a, **k: {"top1": 42.0})  # every w ties on validation
    dds = DDS(descriptors=desc, weight_grid=(4.0, 2.0, 0.25, 1.0)).fit(RunContext(ds, tiny_encoder))
    assert dds.fit_info_["weight_used"] == 0.25 and dds.classifier_.weight == 0.25


def _check_explanation(clf, v, true_label, text_of, emb_of):
    """The explanation of one image against the classifier's own scores and selections."""
    scores = clf.scores(v[None])[0]
    hoods, chosen, _ = clf.selections(v[None])
    expl = clf.explain(v, true_label)
    ranked = sorted(hoods[0], key=lambda c: -scores[c])  # the neighbourhood by DDS score, best first
    assert expl.predicted == clf.classnames[ranked[0]] == clf.classnames[scores.argmax()]
    runner = next((c for c in ranked[1:] if c != true_label), ranked[0])
    assert expl.runner_up == clf.classnames[runner]
    assert expl.true == (clf.classnames[true_label] if true_label is not None else None)
    groups = list(dict.fromkeys((r.role, r.classname) for r in expl.rows))
    roles = {ranked[0]: "predicted", runner: "runner-up"}
    if true_label is not None and true_label != ranked[0]:
        roles[true_label] = "true"
    assert groups == [(roles.get(c, "candidate"), clf.classnames[c]) for c in ranked]
    for c in ranked:
        a = list(hoods[0]).index(c)
        picked = [int(d) for d in chosen[0, a] if d >= 0]
        rows = [r for r in expl.rows if r.classname == clf.classnames[c]]
        assert all(r.class_score == pytest.approx(scores[c] - 10.0, abs=1e-5) for r in rows)
        sims = {clf.pool.texts[d]: float(emb_of(c, d) @ v) for d in picked}
        assert sorted(r.label for r in rows) == sorted(sims)  # the selected descriptions, as written
        assert [r.label for r in rows] == sorted(sims, key=lambda t: -sims[t])  # most similar first
        assert all(r.similarity == pytest.approx(sims[r.label], abs=1e-6) for r in rows)
        assert all(r.text == text_of(c, clf.pool.texts.index(r.label)) for r in rows)
    return expl


def test_explain_lists_each_candidate_with_its_selected_descriptions_classname_free():
    rng = np.random.default_rng(5)
    clf, images = _classifier(rng, weight=0.5)
    seen_true = False
    for i, v in enumerate(images[:8]):
        hoods = clf.selections(v[None])[0][0]
        true_label = int(hoods[i % 3]) if i % 2 else None
        expl = _check_explanation(clf, v, true_label, lambda c, d: clf.pool.texts[d], lambda c, d: clf.pool_emb[d])
        seen_true |= any(r.role == "true" for r in expl.rows)
    assert seen_true


def test_explain_in_the_classname_form_shows_the_texts_with_the_class_name():
    rng = np.random.default_rng(6)
    classes, dim = 4, 6
    pool = DescriptionPool.from_lists([[f"c{c} d{j}" for j in range(3)] for c in range(classes)])
    cache = _FakeCache(dim)
    S = np.full((len(pool), classes), -1.0)
    for c, ids in enumerate(pool.own):
        S[list(ids), c] = 1.0
    clf = DDSClassifier(classnames=[f"c{c}" for c in range(classes)], pool=pool, S=S,
                        name_emb=cache.encode([f"name {c}" for c in range(classes)]), pool_emb=None, k=3, m=2,
                        form="classname", aggregation="max", weight=1.0, template="{}", cache=cache)
    v = rng.normal(size=dim).astype(np.float32)
    true_label = int(clf.selections(v[None])[0][0, 2])
    _check_explanation(clf, v, true_label, clf.pair_text, lambda c, d: cache.encode([clf.pair_text(c, d)])[0])
