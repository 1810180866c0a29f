"""The ensembling controls: WaffleCLIP random descriptors and CuPL sentences (METHODS.md §2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import make_cub_folder
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.datasets import get_dataset
from zsclip.errors import ZsclipError
from zsclip.methods import CuplPrompts, WafflePrompts
from zsclip.methods.waffle import clip_word_list
from zsclip.paths import resource_dir
from zsclip.pipeline import aggregate_metrics


@pytest.fixture()
def cub(tmp_path):
    return get_dataset("cub", make_cub_folder(tmp_path / "cub", n_classes=4, images_per_class=6))


def test_waffle_shares_one_random_set_across_classes(cub):
    ps = WafflePrompts(count=5, seed=3).build(cub)
    assert ps.method == "waffle" and ps.aggregation == "mean"
    labels = [ps.labels[i] for i in range(len(ps.texts)) if ps.owners[i] == 0]
    assert len(labels) == 10  # 5 word + 5 character descriptors, alternating
    for c in range(1, 4):  # the same descriptors for every class, the class name swapped in
        assert [ps.labels[i] for i in range(len(ps.texts)) if ps.owners[i] == c] == labels
    first = ps.texts_of(0)[0]
    assert first.startswith("A photo of a Black-footed Albatross, which ") and first.endswith(".")
    assert WafflePrompts(count=5, seed=3).build(cub).texts == ps.texts  # deterministic per seed
    assert WafflePrompts(count=5, seed=4).build(cub).texts != ps.texts


def test_waffle_follows_the_authors_construction(cub):
    """Black-footed Albatross, Laysan Albatross, Sooty Albatross, Groove-billed Ani: 2 words per name; mean
    word length per name 10.5, 7.5, 7, 8 → 8; one space per name → 2 character groups; longest words
    12, 9, 9, 13 → ceil(10.75) = 11 → 11 + 2 − 11 mod 2 = 12 characters → 2 groups of 6 joined by ", "."""
    real = {name: [f"Has {name[:3]}-99 wings.", "a bird"] for name in cub.classnames}
    ps = WafflePrompts(count=4, descriptors=real, seed=0).build(cub)
    info = ps.info
    assert (info["words_per_descriptor"], info["word_length"], info["char_groups"], info["group_size"]) == (2, 8, 2, 6)
    allowed = set("".join({w.replace(",", "").replace(".", "") for ds in real.values() for d in ds
                           for w in d.split(" ")}))
    assert set(info["character_pool"]) == allowed and {"H", "9", "-"} <= allowed  # capitals, digits, '-'
    labels = ps.labels[: 2 * 4]
    words = {w[:8] for w in clip_word_list()}
    for word_desc, char_desc in zip(labels[0::2], labels[1::2]):
        assert len(word_desc.split(" ")) == 2 and all(w in words for w in word_desc.split(" "))
        groups = char_desc.split(", ")
        assert len(groups) == 2 and all(len(g) == 6 and set(g) <= allowed for g in groups)
    # the authors' raw-prefix phrasing: a descriptor starting with the letter a reads "which is"
    texts = dict(zip(ps.labels, ps.texts_of(0)))
    assert all(t.endswith(f"which is {lab}.") if lab.startswith("a") else
               t.endswith((f"which has {lab}.", f"which {lab}.")) for lab, t in texts.items())


def test_waffle_character_pool_defaults_to_the_card_descriptors():
    ds = get_dataset("toyworld")
    ps = WafflePrompts(count=2).build(ds)
    card = json.loads((resource_dir("prompts") / "toyworld" / "descriptors.json").read_text())
    expected = sorted(set("".join({w.replace(",", "").replace(".", "") for d in card.values() for x in d
                                   for w in x.split(" ")})))
    assert ps.info["character_pool"] == "".join(expected) and ps.info["descriptor_source"].endswith("descriptors.json")


def test_waffle_mixed_is_about_half_real(cub):
    """waffle_and_gpt: int(2/3·15) = 10 shared pairs (20 texts) + 20 real drawn with replacement, then 30 of
    these 40 sampled per class without replacement."""
    real = cub.attribute_descriptors()
    ps = WafflePrompts(count=15, mixed=True, descriptors="attributes", seed=0).build(cub)
    assert ps.info["random_pairs"] == 10
    shares = []
    for c, name in enumerate(cub.classnames):
        labels = [ps.labels[i] for i in range(len(ps.texts)) if ps.owners[i] == c]
        assert len(labels) == 30
        n_real = sum(lab in real[name] for lab in labels)
        assert n_real <= 20 and 30 - n_real <= 20  # at most all 20 drawn real ones, at most the 20 random
        shares.append(n_real / 30)
    assert 0.35 < float(np.mean(shares)) < 0.65
    with pytest.raises(ZsclipError, match=r"waffle with mixed=true needs count ≥ 2 .*; got count=1"):
        WafflePrompts(count=1, mixed=True, descriptors="attributes").build(cub)


def test_cupl_uses_sentences_as_written(cub, tmp_path):
    f = tmp_path / "cupl.json"
    sentences = {name: [f"A {name} has feathers.", f"A {name} can fly."] for name in cub.classnames}
    sentences[cub.classnames[1]] = []
    f.write_text(json.dumps(sentences))
    ps = CuplPrompts(str(f)).build(cub)
    assert ps.aggregation == "prototype" and ps.texts_of(0) == sentences[cub.classnames[0]]
    assert ps.texts_of(1) == [f"a photo of a {cub.classnames[1]}."]


def test_cupl_counts_duplicate_sentences_as_the_authors_do(cub, tiny_encoder):
    """A sentence listed twice weighs twice in the renormalised mean (their files hold ~4% duplicates)."""
    from zsclip.pipeline import ZeroShotClassifier

    a, b = "A bird with a red crest.", "A bird on a branch."
    sentences = {name: [a, a, b] for name in cub.classnames}
    ps = CuplPrompts(sentences).build(cub)
    assert ps.texts_of(0) == [a, a, b] and ps.info["duplicate_sentences_kept"] == len(cub.classnames)
    emb = tiny_encoder.encode_texts([a, b])
    expected = 2 * emb[0] + emb[1]
    expected /= np.linalg.norm(expected)
    head = ZeroShotClassifier(ps, tiny_encoder).scorer.head
    np.testing.assert_allclose(head.weights[0], expected, atol=1e-5)


def test_aggregate_metrics_mean_and_std():
    per_seed = [{"num_images": 4, "num_classes": 2, "top1": v, "mean_per_class_recall": v,
                 "per_class_accuracy": {"a": v, "b": 0.0}} for v in (10.0, 20.0, 30.0)]
    m = aggregate_metrics(per_seed)
    # np.std with ddof = 0, as WaffleCLIP reports it: sqrt(((-10)² + 0 + 10²) / 3)
    assert m["top1"] == pytest.approx(20.0) and m["top1_std"] == pytest.approx(np.sqrt(200 / 3))
    assert m["std"] == "np.std over seeds, ddof=0"
    assert m["seeds"] == 3 and len(m["per_seed"]) == 3 and m["per_class_accuracy"]["a"] == pytest.approx(20.0)
    assert aggregate_metrics(per_seed[:1]) is per_seed[0]


def test_waffle_from_the_cli_reports_mean_and_std(cub, tiny_model, tmp_path):
    out = tmp_path / "w.json"
    res = CliRunner().invoke(app, ["classify", "-d", "cub", "--dataset-root", str(cub.root), "-m", "waffle",
                                   "--seeds", "3", "-p", "count=4", "--model", tiny_model["name"], "--pretrained",
                                   str(tiny_model["checkpoint"]), "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert m["seeds"] == 3 and len(m["per_seed"]) == 3 and "top1_std" in m
    assert m["top1"] == pytest.approx(np.mean([s["top1"] for s in m["per_seed"]]))
    assert record["method"]["seeds"] == [0, 1, 2] and record["method"]["params"]["count"] == 4
    assert record["counts"]["texts"] == 3 * 4 * 8
    assert "±" in res.output


@pytest.mark.parametrize("names, shape", [
    (["fox", "wolf", "owl"], (1, 3, 1, 5)),  # one word each; longest 4, divisible by 1 group: grows to 5
    (["Great Grey Owl", "fox"], (2, 4, 2, 3)),  # 2 words on average, 1 space → 2 groups of 6 // 2
    (["a b c d", "e"], (2, 1, 3, 1)),  # 2.5 words round to 2 and 1.5 spaces to 2 (half to even): 3 groups
])
def test_waffle_shapes_follow_the_class_names(names, shape):
    from zsclip.methods.waffle import shape_of_names

    got = shape_of_names(names)
    assert (got["words_per_descriptor"], got["word_length"], got["char_groups"], got["group_size"]) == shape


def test_waffle_without_any_descriptors_draws_letters_and_says_so(tmp_path):
    from fixtures_data import make_folder_dataset

    ds = get_dataset("folder", make_folder_dataset(tmp_path / "animals"))
    ps = WafflePrompts(count=3, seed=1).build(ds)
    assert ps.info["character_pool"] == "a-z (the dataset has no descriptors)"
    assert ps.info["descriptor_source"] == "none"
    chars = set("".join(ps.labels[1::2]).replace(", ", ""))
    assert chars and chars <= set("abcdefghijklmnopqrstuvwxyz")


def test_waffle_phrases_with_the_authors_raw_prefix_rule(cub):
    """A random word starting with the letter a (not the article) reads "which is", as in the authors' code;
    CbD's corrected rule would read "which has"."""
    checked = 0
    for seed in range(6):
        ps = WafflePrompts(count=15, seed=seed).build(cub)
        for label, text in zip(ps.labels, ps.texts):
            if label.startswith("a") and label.split(" ")[0] not in ("a", "an"):
                assert text.endswith(f", which is {label}."), text
                checked += 1
    assert checked > 0
