"""Prompt formats, CbD phrasing, and the scorer checked against a direct NumPy computation (METHODS.md §0–1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import make_cub_folder

from zsclip.datasets import get_dataset
from zsclip.errors import DescriptorFileError, ZsclipError
from zsclip.methods import ClassNamePrompts, DescriptorPrompts
from zsclip.prompts import (
    PromptSet,
    descriptor_phrase,
    format_template,
    load_templates,
    match_descriptors,
    normalise_descriptor,
    read_descriptor_file,
)
from zsclip.scoring import Scorer, evaluate, explain, topk_indices


@pytest.mark.parametrize("descriptor, phrase", [
    ("a red crest", "which is a red crest"),
    ("an orange beak", "which is an orange beak"),
    ("used for hunting", "which is used for hunting"),
    ("has webbed feet", "which has webbed feet"),
    ("often found near water", "which often found near water"),
    ("typically black", "which typically black"),
    ("can fly", "which can fly"),
    ("antennae", "which has antennae"),
    ("long legs", "which has long legs"),
])
def test_cbd_phrasing(descriptor, phrase):
    assert descriptor_phrase(descriptor) == phrase


def _authors_sentence(descriptor):
    """The CbD authors' make_descriptor_sentence, restated: raw, case-sensitive prefix tests in this order."""
    if descriptor[:1] == "a" or descriptor[:2] == "an":
        return f"which is {descriptor}"
    for prefix in ("has", "often", "typically", "may", "can"):
        if descriptor[: len(prefix)] == prefix:
            return f"which {descriptor}"
    if descriptor[:4] == "used":
        return f"which is {descriptor}"
    return f"which has {descriptor}"


@pytest.mark.parametrize("descriptor, quirk", [
    ("antennae", "which is antennae"),
    ("candied fruit", "which candied fruit"),
    ("Has wings", "which has Has wings"),
    ("An orange beak", "which has An orange beak"),
    ("mayfly wings", "which mayfly wings"),
    ("usedto", "which is usedto"),
    (" a leading space", "which has  a leading space"),
    ("hasty", "which hasty"),
])
def test_published_quirk_reproduces_the_authors_texts(descriptor, quirk):
    assert descriptor_phrase(descriptor, published_quirk=True) == quirk == _authors_sentence(descriptor)


def test_published_quirk_reaches_the_method(tmp_path):
    """The quirk option of the descriptions method: raw descriptors (no cleaning, no dedupe), raw prefixes."""
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=2))
    raw = ["Has wings", "candied fruit", "It is a seabird.", "Has wings", "antennae"]
    descriptors = {ds.classnames[0]: raw, ds.classnames[1]: ["long legs"]}
    quirk = DescriptorPrompts(descriptors=descriptors, published_quirk=True).build(ds)
    assert quirk.texts_of(0) == [f"Black-footed Albatross, {_authors_sentence(d)}" for d in raw]
    fixed = DescriptorPrompts(descriptors=descriptors).build(ds)
    assert fixed.texts_of(0) == ["Black-footed Albatross, which Has wings", "Black-footed Albatross, which has "
                                 "candied fruit", "Black-footed Albatross, which is a seabird",
                                 "Black-footed Albatross, which has antennae"]


@pytest.mark.parametrize("raw, clean", [
    ("It is a seabird.", "a seabird"),
    ("It has a red crest.", "has a red crest"),
    ("- long tail feathers ", "long tail feathers"),
    ("They are black.", "black"),
])
def test_normalise_descriptor(raw, clean):
    assert normalise_descriptor(raw) == clean


def test_templates_accept_both_placeholders_and_sets(tmp_path):
    assert format_template("a photo of a {}.", "cat") == "a photo of a cat."
    assert format_template("a photo of a {c}.", "cat") == "a photo of a cat."
    with pytest.raises(ZsclipError, match="exactly one"):
        format_template("no slot", "cat")
    assert load_templates("simple") == ["a photo of a {}."]
    assert len(load_templates("ensemble")) == 80  # CLIP's ImageNet templates when the card has none
    assert load_templates("ensemble", {"templates": ["a {} bird."]}) == ["a {} bird."]
    f = tmp_path / "t.txt"
    f.write_text("# comment\na {} here.\n\nthe {c} there.\n")
    assert load_templates(str(f)) == ["a {} here.", "the {c} there."]
    f.write_text("broken\n")
    with pytest.raises(ZsclipError, match="template 1"):
        load_templates(str(f))


def test_descriptor_files_cbd_and_dds_formats(tmp_path):
    cbd = tmp_path / "cbd.json"
    cbd.write_text(json.dumps({"Red Fox": ["red fur"], "grey_wolf": ["grey fur", "howls"]}))
    dds = tmp_path / "dds.json"
    dds.write_text(json.dumps({"index_to_classname": {"1": "grey wolf", "0": "Red Fox"},
                               "index_to_descriptions": {"0": ["red fur"], "1": ["grey fur", "howls"]}}))
    assert read_descriptor_file(dds) == {"Red Fox": ["red fur"], "grey wolf": ["grey fur", "howls"]}
    matched = match_descriptors(read_descriptor_file(cbd), ["grey wolf", "red fox"])
    assert matched == [["grey fur", "howls"], ["red fur"]]


def test_descriptor_file_errors_name_file_and_mismatches(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ["x"],')
    with pytest.raises(ZsclipError, match=r"bad\.json is not valid JSON \(line 1"):
        read_descriptor_file(bad)
    bad.write_text(json.dumps({"a": "not a list"}))
    with pytest.raises(DescriptorFileError, match="entry 'a' must be a list"):
        read_descriptor_file(bad)
    with pytest.raises(DescriptorFileError) as info:
        match_descriptors({"Red Foxx": ["x"], "Grey Wolf": ["y"], "Unicorn": ["z"]}, ["red fox", "grey wolf"],
                          "my.json")
    msg = str(info.value)
    assert "my.json" in msg and "'red fox' has no entry (closest in file: 'red foxx')" in msg
    assert "'Unicorn' matches no class" in msg


@pytest.mark.parametrize("content, both", [
    ('{"Black-footed Albatross": ["white"], "black_footed albatross": ["grey"]}',
     ("'Black-footed Albatross'", "'black_footed albatross'")),
    ('{"Cardinal": ["red"], "Cardinal": ["crest"]}', ("'Cardinal' twice",)),
    (json.dumps({"index_to_classname": {"0": "Blue Jay", "1": "blue_jay"},
                 "index_to_descriptions": {"0": ["blue"], "1": ["crest"]}}), ("'Blue Jay'", "'blue_jay'")),
])
def test_colliding_descriptor_keys_are_an_error_naming_both(tmp_path, content, both):
    f = tmp_path / "desc.json"
    f.write_text(content)
    with pytest.raises(DescriptorFileError) as info:
        read_descriptor_file(f)
    assert all(b in str(info.value) for b in both) and "desc.json" in str(info.value)
    with pytest.raises(DescriptorFileError, match="'Red Fox' and 'red-fox'"):
        match_descriptors({"Red Fox": ["a"], "red-fox": ["b"]}, ["red fox"], "mapping")


def test_unreadable_descriptor_and_template_files_are_clear_errors(tmp_path):
    dds = tmp_path / "dds.json"
    dds.write_text(json.dumps({"index_to_classname": {"zero": "Blue Jay"}, "index_to_descriptions": {"zero": []}}))
    with pytest.raises(DescriptorFileError, match="'zero' is not an integer"):
        read_descriptor_file(dds)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"Pinson": ["tête noire"]}'.encode("latin-1"))
    with pytest.raises(DescriptorFileError, match="latin.json is not UTF-8"):
        read_descriptor_file(latin)
    templates = tmp_path / "t.txt"
    templates.write_bytes("une photo d'un {} \xe9".encode("latin-1"))
    with pytest.raises(ZsclipError, match="t.txt is not UTF-8"):
        load_templates(str(templates))


def _random_set(rng, counts, dim=16, aggregation="mean"):
    per_class = [[(f"c{c} t{j}", f"d{j}") for j in range(n)] for c, n in enumerate(counts)]
    ps = PromptSet.from_lists([f"c{c}" for c in range(len(counts))], per_class, aggregation, "test")
    emb = rng.normal(size=(len(ps.texts), dim)).astype(np.float32)
    return ps, emb / np.linalg.norm(emb, axis=1, keepdims=True)


@pytest.mark.parametrize("aggregation", ["mean", "max", "sum", "prototype"])
def test_scorer_matches_direct_numpy(aggregation):
    rng = np.random.default_rng(0)
    ps, text = _random_set(rng, [3, 1, 5, 2], aggregation=aggregation)
    images = rng.normal(size=(50, 16)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    expected = np.zeros((50, 4))
    for c in range(4):
        e = text[ps.owners == c]
        sims = images @ e.T  # per-descriptor cosines
        if aggregation == "mean":
            expected[:, c] = sims.mean(axis=1)  # mean of cosines, not cosine of the renormalised mean
        elif aggregation == "max":
            expected[:, c] = sims.max(axis=1)
        elif aggregation == "sum":
            expected[:, c] = sims.sum(axis=1)
        else:
            w = e.mean(axis=0)
            expected[:, c] = images @ (w / np.linalg.norm(w))
    got = Scorer(ps, text, chunk_size=7).scores(images)  # several chunks
    np.testing.assert_allclose(got, expected, atol=1e-5)
    got16 = Scorer(ps, text).scores(images.astype(np.float16))
    np.testing.assert_allclose(got16, expected, atol=2e-3)


def test_cbd_mean_differs_from_renormalised_mean():
    rng = np.random.default_rng(1)
    ps, text = _random_set(rng, [4, 4])
    images = rng.normal(size=(5, 16)).astype(np.float32)
    mean = Scorer(ps, text).scores(images)
    proto = Scorer(PromptSet.from_lists(ps.classnames, [[(t, t) for t in ps.texts_of(c)] for c in range(2)],
                                        "prototype", "x"), text).scores(images)
    assert not np.allclose(mean, proto)


def test_cbd_prompts_on_cub_attributes(tmp_path):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=4))
    ps = DescriptorPrompts(descriptors="attributes", before="A photo of a ", after=".").build(ds)
    assert ps.method == "descriptions" and ps.aggregation == "mean"
    first = ps.texts_of(0)
    assert all(t.startswith("A photo of a Black-footed Albatross, which ") and t.endswith(".") for t in first)
    assert ps.labels[0] in ds.attribute_descriptors()["Black-footed Albatross"]


def test_class_without_descriptors_falls_back_to_its_name(tmp_path):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=3))
    descriptors = {"Black-footed Albatross": ["white wings"], "Laysan Albatross": [], "Sooty Albatross": ["  "]}
    ps = DescriptorPrompts(descriptors=descriptors).build(ds)
    assert ps.texts_of(1) == ["a photo of a Laysan Albatross."]
    assert ps.texts_of(2) == ["a photo of a Sooty Albatross."]
    assert ps.labels[1:] == ("(class name)", "(class name)")  # what explanations show for the fallback
    assert not any(t.endswith("which has ") or t.endswith("which has") for t in ps.texts)
    assert ps.info == {"descriptor_source": "mapping", "classes_without_descriptors": 2, "phrasing": "corrected"}
    quirk = DescriptorPrompts(descriptors="attributes", published_quirk=True, attribute_threshold=30).build(ds)
    assert quirk.info["descriptor_source"] == "attributes(threshold=30)" and quirk.info["phrasing"] == "published-quirk"


def test_classname_prompts_use_the_card_ensemble(tmp_path):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=2))
    ps = ClassNamePrompts("ensemble").build(ds)
    assert ps.aggregation == "prototype"
    assert len(ps.texts_of(0)) == len(ds.card["templates"])
    assert "Black-footed Albatross" in ps.texts[0]


def test_metrics():
    scores = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0], [0.5, 0.4, 0.6, 0, 0, 0],
                       [0, 0, 0, 0.1, 0.2, 0.3]], dtype=np.float32)
    labels = np.array([0, 1, 0, 3])
    m = evaluate(scores, labels, [f"c{i}" for i in range(6)])
    assert m["top1"] == pytest.approx(50.0)
    assert m["top5"] == pytest.approx(100.0)
    # class 0: 1 of 2, class 1: 1 of 1, class 3: 0 of 1 → (50 + 100 + 0) / 3
    assert m["mean_per_class_recall"] == pytest.approx(50.0)
    assert m["per_class_accuracy"] == {"c0": 50.0, "c1": 100.0, "c3": 0.0}
    assert "top5" not in evaluate(scores[:, :3], labels % 3, ["a", "b", "c"])
    np.testing.assert_array_equal(topk_indices(scores, 2)[2], [2, 0])


def test_explanation_lists_predicted_true_and_runner_up():
    rng = np.random.default_rng(3)
    ps, text = _random_set(rng, [3, 2, 2])
    scorer = Scorer(ps, text)
    image = text[3] + 0.1 * text[0]  # close to class 1's first descriptor
    expl = explain(scorer, image, true_label=0)
    assert expl.predicted == "c1" and expl.true == "c0" and expl.runner_up == "c2"
    roles = [r.role for r in expl.rows]
    assert roles == ["predicted"] * 2 + ["true"] * 3 + ["runner-up"] * 2
    sims = [r.similarity for r in expl.rows if r.role == "predicted"]
    assert sims == sorted(sims, reverse=True)
    assert expl.summary().startswith("I saw a c1 because I saw: d0")
    assert "runner-up: c2" in expl.to_text() and "<table>" in expl._repr_html_()


def test_explanation_roles_scores_and_text_in_every_case():
    """Hand-made scores: a correct prediction names no 'true' group and says '(correct)'; a wrong one lists the true
    class's texts and its own score; without a label there is no true class; texts within a group are ranked by
    cosine, ties in prompt order; each group's header carries that class's score."""
    e = np.eye(4, dtype=np.float32)
    ps = PromptSet.from_lists(["a", "b", "c"], [[("A1", "a1"), ("A2", "a2")], [("B1", "b1")], [("C1", "c1")]], "mean",
                              "test")
    scorer = Scorer(ps, np.stack([e[0], e[0], e[1], e[2]]))  # A1 and A2 are the same vector: a tie
    image = np.array([0.75, 0.5, 0.25, 0.0], dtype=np.float16)
    scores = {"a": 0.75, "b": 0.5, "c": 0.25}

    right = explain(scorer, image, true_label=0)
    assert (right.predicted, right.true, right.runner_up) == ("a", "a", "b")
    assert [(r.role, r.classname, r.label, r.text) for r in right.rows] == [
        ("predicted", "a", "a1", "A1"), ("predicted", "a", "a2", "A2"), ("runner-up", "b", "b1", "B1")]
    assert [r.class_score for r in right.rows] == pytest.approx([0.75, 0.75, 0.5], abs=1e-6)
    assert right.to_text().splitlines() == [
        "I saw a a because I saw: a1 (0.750), a2 (0.750)", "true class: a (correct)",
        "predicted: a (score 0.7500)", "  +0.7500  a1", "  +0.7500  a2", "runner-up: b (score 0.5000)",
        "  +0.5000  b1"]

    wrong = explain(scorer, image, true_label=2)
    assert (wrong.predicted, wrong.true, wrong.runner_up) == ("a", "c", "b")
    assert [(r.role, r.classname) for r in wrong.rows] == [("predicted", "a"), ("predicted", "a"), ("true", "c"),
                                                           ("runner-up", "b")]
    assert "true class: c\n" in wrong.to_text() + "\n" and "(correct)" not in wrong.to_text()
    assert "true: c (score 0.2500)" in wrong.to_text()
    assert explain(scorer, image, true_label=1).runner_up == "c"  # the runner-up is neither predicted nor true

    unlabelled = explain(scorer, image)
    assert (unlabelled.true, unlabelled.runner_up) == (None, "b") and "true class" not in unlabelled.to_text()
    assert {r.role for r in unlabelled.rows} == {"predicted", "runner-up"}
    assert all(r.class_score == pytest.approx(scores[r.classname], abs=1e-6) for r in unlabelled.rows)
    assert unlabelled.summary(top=1) == "I saw a a because I saw: a1 (0.750)"
    assert unlabelled.to_records()[0] == {"role": "predicted", "classname": "a", "class_score": 0.75, "label": "a1",
                                          "text": "A1", "similarity": 0.75}


def test_explanation_edges_two_classes_four_texts_and_html():
    """With two classes and a wrong prediction there is no third class: the runner-up is the prediction itself; the
    summary names the top 3 texts; the HTML table has one row per text, escaped."""
    e = np.eye(3, dtype=np.float32)
    ps = PromptSet.from_lists(["a", "b"], [[(f"A{i}", f"<a{i}>") for i in range(4)], [("B", "b")]], "mean", "test")
    scorer = Scorer(ps, np.stack([e[0], e[0] * 0.9 + e[2] * 0.1, e[0] * 0.8, e[0] * 0.7, e[1]]))
    expl = explain(scorer, np.array([1.0, 0.2, 0.0], dtype=np.float32), true_label=1)
    assert (expl.predicted, expl.true, expl.runner_up) == ("a", "b", "a")
    assert expl.summary() == "I saw a a because I saw: <a0> (1.000), <a1> (0.900), <a2> (0.800)"
    html = expl._repr_html_()
    assert html.count("<tr>") == len(expl.rows) + 1 and "&lt;a3&gt;" in html and "<a3>" not in html


def test_scorer_checks_shapes_and_its_head_says_what_it_folds():
    """The folded head carries the method and aggregation (a notebook user may save it as a head), and shape
    mismatches are errors that give both shapes."""
    rng = np.random.default_rng(3)
    ps, text = _random_set(rng, [2, 3], dim=8, aggregation="mean")
    scorer = Scorer(ps, text)
    assert scorer.head.provenance == {"method": "test", "aggregation": "mean"}
    assert scorer.head.classnames == ("c0", "c1") and scorer.num_classes == 2
    assert Scorer(_random_set(rng, [2, 3], dim=8, aggregation="max")[0], text).head is None
    with pytest.raises(ZsclipError, match="4 text embeddings for 5 texts"):
        Scorer(ps, text[:4])
    with pytest.raises(ZsclipError, match=r"shape \(2, 9\) do not match text embeddings of dimension 8"):
        scorer.scores(np.zeros((2, 9), dtype=np.float32))
    with pytest.raises(ZsclipError, match="3 score rows for 2 labels"):
        evaluate(np.zeros((3, 4)), np.array([0, 1]), list("abcd"))


def test_top5_from_five_classes_and_topk_against_a_full_sort():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(50, 300)).astype(np.float32)  # wide enough that numpy partitions, not sorts
    for k in (1, 2, 5, 300):
        np.testing.assert_array_equal(topk_indices(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])
    labels = rng.integers(0, 5, 40)
    m = evaluate(rng.normal(size=(40, 5)), labels, list("abcde"))
    assert m["top5"] == 100.0  # five classes: every label is in the top 5
    assert "top5" not in evaluate(rng.normal(size=(40, 4)), labels % 4, list("abcd"))


def test_explanation_keeps_the_prompt_order_of_texts_that_tie():
    """A class with many texts of one cosine (e.g. the same text under several labels) lists them in prompt
    order, not in whatever order an unstable sort leaves them."""
    e = np.eye(4, dtype=np.float32)
    labels = [f"d{j}" for j in range(40)]
    per_class = [[(f"A {lab}", lab) for lab in labels], [("B", "b")]]
    ps = PromptSet.from_lists(["A", "B"], per_class, "mean", "test")
    text = np.stack([e[0] if j % 7 else (e[0] + e[1]) / np.sqrt(2) for j in range(40)] + [e[2]])
    expl = explain(Scorer(ps, text), e[0], true_label=0)
    rows = [r.label for r in expl.rows if r.classname == "A"]
    tied = [lab for j, lab in enumerate(labels) if j % 7]
    assert rows == tied + [lab for j, lab in enumerate(labels) if not j % 7]
