"""REAL-Prompt's name rule, retrieval ranking, REAL-Linear's training and WiSE-FT wiring, and the LAION-layout
corpus run end to end through the CLI (count → real-prompt → real-linear), with bad inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fixtures_data import make_cub_folder
from fixtures_real import make_clip_retrieval, make_image_corpus, make_laion_metadata, nickname
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.context import RunContext
from zsclip.corpus import Corpus
from zsclip.datasets import get_dataset
from zsclip.errors import ZsclipError
from zsclip.methods import make_method
from zsclip.pipeline import run_method
from zsclip.real import (
    WARMUP_STEPS,
    ClassCounts,
    choose_name,
    lr_at,
    rank_candidates,
    replacements,
    retrieve_string,
    total_steps,
    train_head,
)

runner = CliRunner()


# -- REAL-Prompt's rule -----------------------------------------------------------------------------------
def test_relaxed_rule_takes_the_most_frequent_name_unless_its_words_are_a_strict_subset():
    assert choose_name("krell vorlick", {"krell vorlick": 10, "snaiky": 40}) == "snaiky"
    # a name trap: the genus word is more frequent but its words are a subset of the official name's
    assert choose_name("krell vorlick", {"krell vorlick": 10, "vorlick": 900}) == "krell vorlick"
    assert choose_name("krell vorlick", {"krell vorlick": 10, "vorlick": 900}, strict=True) == "vorlick"
    # the same word set in another order or case counts as equal, so it is taken
    assert choose_name("krell vorlick", {"krell vorlick": 1, "Vorlick-Krell": 5}) == "Vorlick-Krell"
    # no fall-through: the second most frequent name is never used
    assert choose_name("krell vorlick", {"krell vorlick": 1, "vorlick": 9, "snaiky": 8}) == "krell vorlick"


def test_ties_go_to_the_official_name_then_to_the_first_listed():
    assert choose_name("a b", {"x": 5, "a b": 5, "y": 5}) == "a b"
    assert choose_name("a b", {"x": 5, "y": 5, "a b": 1}) == "x"
    assert choose_name("a b", {}) == "a b"


def test_replacements_list_every_renaming_with_both_counts():
    counts = [ClassCounts("krell vorlick", {"krell vorlick": 3, "snaiky": 9}),
              ClassCounts("dun vorlick", {"dun vorlick": 3, "vorlick": 90})]
    chosen, changed = replacements(["Krell Vorlick", "dun vorlick"], counts, strict=False)
    assert chosen == ["snaiky", "dun vorlick"]
    assert changed == [{"class": "Krell Vorlick", "official_count": 3, "chosen": "snaiky", "chosen_count": 9}]


# -- retrieval ranking ----------------------------------------------------------------------------------------
def test_ranking_is_the_mean_cosine_over_names_top_n_with_nonnegative_score():
    rng = np.random.default_rng(0)
    caps, names = rng.normal(size=(40, 8)), rng.normal(size=(3, 8))
    pos, scores = rank_candidates(caps, names, n=10)
    cu = caps / np.linalg.norm(caps, axis=1, keepdims=True)
    nu = names / np.linalg.norm(names, axis=1, keepdims=True)
    direct = (cu @ nu.T).mean(axis=1)
    expected = [i for i in np.argsort(-direct, kind="stable") if direct[i] >= 0][:10]
    assert pos.tolist() == expected
    np.testing.assert_allclose(scores, direct[expected], rtol=1e-5)
    assert len(rank_candidates(-np.abs(caps), np.abs(names), n=10)[0]) == 0  # all negative: nothing kept


def test_string_retrieval_uses_text_emb_and_matches_the_direct_computation(tmp_path):
    names = ["blue jay", "red fox", "snow owl"]
    folder = make_clip_retrieval(tmp_path / "c", names, dim=16)
    corpus = Corpus.open(folder)
    rng = np.random.default_rng(1)
    name_emb = [rng.normal(size=(1, 16)).astype(np.float32) for _ in names]

    def no_encoding(texts):
        raise AssertionError("text_emb exists: captions must not be encoded")

    got = retrieve_string(corpus, [[n] for n in names], name_emb, n=5, seed=0, encode=no_encoding)
    caps = corpus.captions(np.arange(corpus.num_rows))
    text = corpus.embeddings(np.arange(corpus.num_rows), "text").astype(np.float32)
    for c, name in enumerate(names):
        rows = np.array([r for r, t in enumerate(caps) if name in t.lower()], dtype=np.int64)
        if not len(rows):
            assert not (got.labels == c).any()
            continue
        rows = np.random.default_rng([0, c]).permutation(rows)
        t = text[rows] / np.linalg.norm(text[rows], axis=1, keepdims=True)
        e = name_emb[c][0] / np.linalg.norm(name_emb[c][0])
        s = t @ e
        keep = [i for i in np.argsort(-s, kind="stable") if s[i] >= 0][:5]
        assert got.rows[got.labels == c].tolist() == rows[keep].tolist()
    assert got.per_class(3)[2] == 0  # the last class is never named


# -- training -----------------------------------------------------------------------------------------------
def test_step_count_and_warmup_then_cosine_schedule():
    assert total_steps(500, 100) == 500 * 100 * 10 // 32
    assert total_steps(500, 1000) == 32_000 and total_steps(500, 1000, cap=100) == 100
    assert lr_at(0, 1000) == pytest.approx(1e-4 / WARMUP_STEPS)
    assert lr_at(WARMUP_STEPS - 1, 1000) == pytest.approx(1e-4)
    assert lr_at(WARMUP_STEPS, 1000) == pytest.approx(1e-4)
    assert lr_at(WARMUP_STEPS + (1000 - WARMUP_STEPS) // 2, 1000) == pytest.approx(5e-5)
    lrs = [lr_at(s, 1000) for s in range(WARMUP_STEPS, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-7


def test_training_is_deterministic_for_a_seed_and_learns():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    y = np.repeat(np.arange(4), 40)
    x = centres[y] + 0.8 * rng.normal(size=(160, 16))
    text, tl = centres + 0.1 * rng.normal(size=(4, 16)), np.arange(4)
    init = rng.normal(size=(4, 16)).astype(np.float32)
    init /= np.linalg.norm(init, axis=1, keepdims=True)
    a = train_head(x, y, text, tl, init, steps=400, seed=3)
    b = train_head(x, y, text, tl, init, steps=400, seed=3)
    c = train_head(x, y, text, tl, init, steps=400, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)

    def loss(w):  # the training objective on the image features
        z = 100 * xu @ w.T
        z -= z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))

    assert loss(a) < 0.95 * loss(init)


# -- the method on a dataset ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = make_cub_folder(tmp_path_factory.mktemp("real") / "data", n_classes=4, images_per_class=6)
    return get_dataset("cub", root)


@pytest.fixture(scope="module")
def cub_corpus(cub, tmp_path_factory):
    return make_clip_retrieval(tmp_path_factory.mktemp("real-corpus") / "c", cub.classnames, dim=32)


def test_wise_ft_wiring_alpha_zero_is_real_prompt_and_empty_classes_fall_back(cub, cub_corpus, tiny_encoder):
    ctx = RunContext(cub, tiny_encoder)
    zero = run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), alpha=0.0, steps=30)).classifiers[0]
    prompt = run_method(ctx, make_method("real-prompt", corpus=str(cub_corpus))).classifiers[0]
    full = run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), alpha=1.0, steps=30)).classifiers[0]
    half = run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), alpha=0.5, steps=30)).classifiers[0]
    v = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    np.testing.assert_allclose(zero.scores(v), prompt.scores(v), atol=1e-5)
    np.testing.assert_allclose(half.head_.weights, 0.5 * zero.head_.weights + 0.5 * full.head_.weights, atol=1e-6)
    last = len(cub.classnames) - 1  # never named in the corpus: its weight stays the zero-shot one
    assert half.fit_info_["classes_without_images"] == [cub.classnames[last]]
    assert half.fit_info_["zero_shot_fallbacks"] == 1
    np.testing.assert_allclose(full.head_.weights[last], zero.head_.weights[last], atol=1e-6)
    assert not np.allclose(full.head_.weights[0], zero.head_.weights[0])
    # the retrieved set is saved with provenance and reused; the head is saved and loads back
    again = run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), alpha=0.5, steps=30)).classifiers[0]
    assert again.fit_info_["retrieved_reused"] and not again.fit_info_["head_trained"]
    np.testing.assert_array_equal(again.head_.weights, half.head_.weights)
    import pyarrow.parquet as pq

    saved = pq.read_table(os.path.expandvars(half.fit_info_["retrieved_set"]))
    assert saved.column_names == ["row", "class", "caption", "score"]
    assert all(cub.classnames[c].lower() in t.lower() or nickname(cub.classnames[0]) in t
               for c, t in zip(saved.column("class").to_pylist(), saved.column("caption").to_pylist()))


def test_knn_retrieval_and_corpus_search(cub, cub_corpus, tiny_encoder, tiny_model):
    ctx = RunContext(cub, tiny_encoder)
    knn = run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), retrieval="knn", n=5,
                                      steps=20)).classifiers[0]
    assert knn.fit_info_["retrieved_images"] > 0
    assert (knn.retrieved_.per_class(len(cub.classnames)) <= 5).all()
    assert list((cub_corpus / "index").glob("image-*.faiss"))  # the index is kept next to the corpus
    res = runner.invoke(app, ["corpus", "search", "a photo of a bird", "--corpus", str(cub_corpus), "-k", "3",
                              "--model", tiny_model["name"], "--pretrained", str(tiny_model["checkpoint"]),
                              "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    caps = Corpus.open(cub_corpus).captions([h["row"] for h in hits])
    assert [h["caption"] for h in hits] == caps


# -- the LAION-layout fixture end to end, and bad inputs -------------------------------------------------------
def test_laion_fixture_count_then_real_prompt_then_real_linear_via_the_cli(cub, cub_corpus, tiny_model, tmp_path):
    raw = make_laion_metadata(tmp_path / "laion", cub.classnames)
    synonyms = tmp_path / "syn.json"
    synonyms.write_text(json.dumps({str(i): {"name": c, "alternates": {c: None, nickname(c): None}}
                                    for i, c in enumerate(cub.classnames)}))
    metrics = tmp_path / "metrics.json"
    res = runner.invoke(app, ["corpus", "count", "--corpus", str(raw), "--synonyms", str(synonyms), "-o", str(metrics),
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    counted = json.loads(metrics.read_text())
    assert counted["0"]["alternates"][nickname(cub.classnames[0])] == 9  # 3 of 4 captions of class 0
    base = ["classify", "-d", "cub", "--dataset-root", str(cub.root), "--model", tiny_model["name"],
            "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu"]
    rp = tmp_path / "rp.json"
    res = runner.invoke(app, [*base, "-m", "real-prompt", "-p", f"metrics={metrics}", "-o", str(rp)])
    assert res.exit_code == 0, res.output
    info = json.loads(rp.read_text())["fit_info"]
    assert info["replacements"] == [{"class": cub.classnames[0], "official_count": 3,
                                     "chosen": nickname(cub.classnames[0]), "chosen_count": 9}]
    rl = tmp_path / "rl.json"
    res = runner.invoke(app, [*base, "-m", "real-linear", "-p", f"corpus={cub_corpus}", "-p", f"metrics={metrics}",
                              "-p", "steps=20", "-o", str(rl)])
    assert res.exit_code == 0, res.output
    rec = json.loads(rl.read_text())
    assert rec["fit_info"]["retrieved_images"] > 0 and rec["fit_info"]["renamed"] == 1
    assert rec["method"]["params"]["corpus"] == str(cub_corpus)
    # the raw shards name images by URL only and have no img_emb: one clear line, exit code 2
    res = runner.invoke(app, [*base, "-m", "real-linear", "-p", f"corpus={raw}", "-p", f"metrics={metrics}"])
    assert res.exit_code == 2 and "no 'image_path' column" in res.output and "img2dataset" in res.output
    # the same captions with downloaded image files (no img_emb): the retrieved images are encoded
    images = make_image_corpus(tmp_path / "imgs", cub.classnames)
    res = runner.invoke(app, [*base, "-m", "real-linear", "-p", f"corpus={images}", "-p", f"metrics={metrics}",
                              "-p", "steps=10", "-o", str(rl)])
    assert res.exit_code == 0, res.output
    info = json.loads(rl.read_text())["fit_info"]
    assert info["image_features"] == "encoded from image files" and info["corpus_images_encoded"] > 0


def test_bad_inputs_get_clear_errors(cub, tiny_model, tmp_path):
    base = ["classify", "-d", "cub", "--dataset-root", str(cub.root), "--model", tiny_model["name"],
            "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu", "-m", "real-linear"]
    # misaligned shards
    bad = make_clip_retrieval(tmp_path / "bad", cub.classnames, dim=32)
    np.save(bad / "img_emb" / "img_emb_0.npy", np.zeros((3, 32), np.float16))
    res = runner.invoke(app, [*base, "-p", f"corpus={bad}"])
    assert res.exit_code == 2 and "misaligned shard" in res.output
    # missing caption column
    raw = make_laion_metadata(tmp_path / "raw", cub.classnames)
    res = runner.invoke(app, ["corpus", "count", "--corpus", str(raw), "--caption-column", "caption",
                              "--synonyms", str(tmp_path / "none.json"), "-o", str(tmp_path / "m.json")])
    assert res.exit_code == 2
    # empty corpus
    (tmp_path / "empty" / "metadata").mkdir(parents=True)
    res = runner.invoke(app, [*base, "-p", f"corpus={tmp_path / 'empty'}"])
    assert res.exit_code == 2 and "empty corpus" in res.output
    # no corpus at all, a corpus without image embeddings, a model of another dimension
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "corpus=DIR" in res.output
    other = make_clip_retrieval(tmp_path / "d16", cub.classnames, dim=16)
    res = runner.invoke(app, [*base, "-p", f"corpus={other}"])
    assert res.exit_code == 2 and "another model" in res.output
    # real-prompt on a dataset without synonyms and no metrics/corpus
    res = runner.invoke(app, [*base[:-1], "real-prompt"])
    assert res.exit_code == 2 and "metrics=FILE" in res.output
    # a synonym file without counts and no corpus
    syn = tmp_path / "syn.json"
    syn.write_text(json.dumps({"0": {"name": cub.classnames[0], "alternates": {"x": None}}}))
    with pytest.raises(ZsclipError, match="has no count"):
        from zsclip.real import counts_from_metrics

        counts_from_metrics(syn)


def test_a_corpus_where_no_class_matches_falls_back_to_zero_shot(cub, tiny_encoder, tmp_path):
    from zsclip.corpus import write_clip_retrieval

    folder = write_clip_retrieval(tmp_path / "none", ["a landscape", "a tree"],
                                  np.random.default_rng(0).normal(size=(2, 32)))
    ctx = RunContext(cub, tiny_encoder)
    clf = run_method(ctx, make_method("real-linear", corpus=str(folder), steps=10)).classifiers[0]
    prompt = run_method(ctx, make_method("real-prompt", corpus=str(folder))).classifiers[0]
    assert clf.fit_info_["zero_shot_fallbacks"] == len(cub.classnames)
    v = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
    np.testing.assert_allclose(clf.scores(v), prompt.scores(v), atol=1e-5)


def test_subset_names_option_and_class_balanced_training():
    from zsclip.methods.real import retrieval_names

    names = ["krell vorlick", "vorlick", "snaiky", "krell"]
    assert retrieval_names("krell vorlick", names, "keep") == names
    assert retrieval_names("krell vorlick", names, "drop") == ["krell vorlick", "snaiky"]
    rng = np.random.default_rng(0)
    y = np.array([0] * 60 + [1] * 4)
    x = rng.normal(size=(64, 8))
    init = rng.normal(size=(2, 8)).astype(np.float32)
    a = train_head(x, y, x[:2], np.arange(2), init, steps=60, seed=1, balance="class")
    np.testing.assert_array_equal(a, train_head(x, y, x[:2], np.arange(2), init, steps=60, seed=1, balance="class"))
    assert not np.array_equal(a, train_head(x, y, x[:2], np.arange(2), init, steps=60, seed=1))


# -- a corpus without image embeddings: the retrieved images are encoded once into image stores --------------
def _direct_encode(encoder, paths):
    import torch
    from PIL import Image

    with_pixels = []
    for p in paths:
        with Image.open(p) as img:
            with_pixels.append(encoder.preprocess(img.convert("RGB")))
    return encoder.encode_images(torch.stack(with_pixels))


def test_a_corpus_without_img_emb_encodes_the_retrieved_images_once(cub, tiny_encoder, tmp_path):
    from zsclip.real import corpus_image_features, image_paths

    folder = make_image_corpus(tmp_path / "imgs", cub.classnames)
    ctx = RunContext(cub, tiny_encoder)
    first = run_method(ctx, make_method("real-linear", corpus=str(folder), steps=20)).classifiers[0]
    rows = first.retrieved_.rows
    assert len(rows) > 0 and first.fit_info_["image_features"] == "encoded from image files"
    assert first.fit_info_["corpus_images_encoded"] == len(set(rows.tolist()))  # one file per row, each once
    # the features are those of a direct encode of each retrieved image file
    corpus = Corpus.open(folder)
    paths = image_paths(corpus, rows)
    assert paths == [str((folder / f"images/{r:05d}.jpg").resolve()) for r in rows]  # the fixture's file of row r
    feats, info = corpus_image_features(corpus, rows, tiny_encoder)
    assert info["images_encoded"] == 0 and len(info["stores"]) == 1
    np.testing.assert_allclose(feats, _direct_encode(tiny_encoder, paths), atol=1e-5)
    # a second run that needs the features again (another WiSE-FT alpha: a new head) encodes nothing
    again = run_method(ctx, make_method("real-linear", corpus=str(folder), steps=20, alpha=0.3)).classifiers[0]
    assert again.fit_info_["head_trained"] and again.fit_info_["corpus_images_encoded"] == 0
    # a smaller retrieved set (n=2) is a subset of what is stored: nothing encoded, no new store
    small = run_method(ctx, make_method("real-linear", corpus=str(folder), steps=20, n=2)).classifiers[0]
    assert small.fit_info_["corpus_images_encoded"] == 0 and small.fit_info_["corpus_image_stores"] == \
        first.fit_info_["corpus_image_stores"]
    # an image file replaced since: exactly that one is encoded again, and its new features are used
    from fixtures_data import class_image

    class_image(3, 24).save(paths[0], format="JPEG")
    os.utime(paths[0], ns=(1, 1))
    feats2, info2 = corpus_image_features(corpus, rows, tiny_encoder)
    assert info2["images_encoded"] == 1
    np.testing.assert_allclose(feats2[0], _direct_encode(tiny_encoder, paths[:1])[0], atol=1e-5)
    np.testing.assert_allclose(feats2[1:], feats[1:], atol=1e-6)


def test_encoding_corpus_images_resumes_after_a_crash(cub, tiny_encoder, tmp_path):
    from fixtures_data import crash_at_shard

    from zsclip.real import corpus_image_features, image_paths

    corpus = Corpus.open(make_image_corpus(tmp_path / "imgs", cub.classnames))
    rows = np.arange(25, dtype=np.int64)
    with crash_at_shard(2), pytest.raises(KeyboardInterrupt):  # dies after one whole shard of 10 images
        corpus_image_features(corpus, rows, tiny_encoder, shard_size=10)
    feats, info = corpus_image_features(corpus, rows, tiny_encoder, shard_size=10)
    assert info["images_encoded"] == 15  # the first shard was kept
    np.testing.assert_allclose(feats, _direct_encode(tiny_encoder, image_paths(corpus, rows)), atol=1e-5)


def test_a_corpus_without_img_emb_gives_clear_errors(cub, tiny_encoder, tmp_path):
    from zsclip.real import image_paths

    ctx = RunContext(cub, tiny_encoder)
    folder = make_image_corpus(tmp_path / "imgs", cub.classnames)
    # a missing image file: which row, which shard, which path
    corpus = Corpus.open(folder)
    gone = folder / corpus.read_columns(0, ["image_path"]).column(0)[3].as_py()
    gone.unlink()
    with pytest.raises(ZsclipError, match=r"row 3 \(metadata_0.parquet, row 3\): '.*00003.jpg'"):
        image_paths(corpus, np.array([1, 3, 5]))
    # kNN needs an image index over every corpus image: refused, pointing to retrieval=string
    with pytest.raises(ZsclipError, match="retrieval=string with min_images=0"):
        run_method(ctx, make_method("real-linear", corpus=str(folder), retrieval="knn"))
    # raw LAION metadata shards name images by URL only: refused before any retrieval, saying what to do
    raw = make_laion_metadata(tmp_path / "laion", cub.classnames)
    with pytest.raises(ZsclipError, match="no 'image_path' column.*TEXT, URL.*img2dataset"):
        run_method(ctx, make_method("real-linear", corpus=str(raw)))
    # image_path values that are URLs are not downloaded
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = tmp_path / "urls"
    (urls / "metadata").mkdir(parents=True)
    pq.write_table(pa.table({"caption": [f"a photo of a {cub.classnames[0]}"], "image_path": ["http://x/0.jpg"]}),
                   urls / "metadata" / "metadata_0.parquet")
    with pytest.raises(ZsclipError, match="row 0 .*'http://x/0.jpg'.*URLs are not downloaded"):
        run_method(ctx, make_method("real-linear", corpus=str(urls), steps=5))


# -- recipe deviations chosen on the toy world's validation split (defaults: the authors') -----------------------
def test_top_up_adds_each_short_class_its_best_knn_images_up_to_the_minimum():
    from zsclip.real import Retrieved, top_up

    string = Retrieved(np.array([10, 11, 12, 20]), np.array([0, 0, 0, 1]), np.array([.9, .8, .7, .6], np.float32),
                       ["a", "b", "c", "d"], np.array([3, 1, 0]))
    knn = Retrieved(np.array([11, 13, 14, 20, 21, 22, 30, 31]), np.array([0, 0, 0, 1, 1, 1, 2, 2]),
                    np.array([.5, .4, .3, .5, .4, .3, .2, .1], np.float32), list("efghijkl"), np.array([3, 3, 2]))
    got = top_up(string, knn, minimum=3, num_classes=3)
    # class 0 has 3 already; class 1 gets 21, 22 (20 is there); class 2 (never matched) gets 30, 31
    assert got.rows.tolist() == [10, 11, 12, 20, 21, 22, 30, 31]
    assert got.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert got.captions == ["a", "b", "c", "d", "i", "j", "k", "l"]
    np.testing.assert_allclose(got.scores, [.9, .8, .7, .6, .4, .3, .2, .1])
    assert top_up(string, knn, minimum=0, num_classes=3).rows.tolist() == string.rows.tolist()


def test_min_images_tops_up_short_classes_and_the_record_names_the_recipe(cub, cub_corpus, tiny_encoder):
    ctx = RunContext(cub, tiny_encoder)
    authors = run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), n=5, steps=10)).classifiers[0]
    assert authors.fit_info_["recipe"] == "authors' (METHODS §6)"
    topped = run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), n=5, min_images=4,
                                         steps=10)).classifiers[0]
    per = topped.retrieved_.per_class(len(cub.classnames))
    assert (per >= 4).all() and topped.fit_info_["zero_shot_fallbacks"] == 0  # the never-named class too
    # every string-matched image is kept, first in its class
    for c in range(len(cub.classnames)):
        mine = authors.retrieved_.rows[authors.retrieved_.labels == c].tolist()
        assert topped.retrieved_.rows[topped.retrieved_.labels == c].tolist()[:len(mine)] == mine
    assert topped.fit_info_["recipe"] == "deviates from the authors': min_images=4"
    with pytest.raises(ZsclipError, match="leave min_images at 0"):
        run_method(ctx, make_method("real-linear", corpus=str(cub_corpus), retrieval="knn", min_images=4))


def test_keep_official_prompts_a_renamed_class_with_both_names(cub, tiny_encoder, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({str(i): {"name": c, "alternates": {c: 3, nickname(c): 9 if i == 0 else 0}}
                                   for i, c in enumerate(cub.classnames)}))
    ctx = RunContext(cub, tiny_encoder)
    plain = make_method("real-prompt", metrics=str(metrics)).build(ctx)
    both = make_method("real-prompt", metrics=str(metrics), keep_official=True).build(ctx)
    assert plain.texts_of(0) == [t.replace("{}", nickname(cub.classnames[0])) for t in plain.labels[:len(
        plain.texts_of(0))]]
    assert both.texts_of(0) == plain.texts_of(0) + [t.replace("{}", cub.classnames[0])
                                                      for t in plain.labels[:len(plain.texts_of(0))]]
    assert both.texts_of(1) == plain.texts_of(1)  # not renamed: one name, as before
    assert both.info["recipe"] == "deviates from the authors': keep_official=true"
    assert plain.info["recipe"] == "authors' (METHODS §6)"
