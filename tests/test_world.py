"""The toy world: deterministic rendering, the corpus's naming tiers, the committed model, the toyworld dataset."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from zsclip.datasets import get_dataset
from zsclip.models import load_model
from zsclip.paths import resource_dir
from zsclip.world import (
    EVAL_STYLE,
    MODEL_DIR,
    TIERS,
    build_corpus,
    build_world,
    descriptors,
    instance_attributes,
    real_synonyms,
    render,
    synonym_counts,
)
from zsclip.world.corpus import CORPUS_SEED_LIMIT, P_RELATIVE_CLAUSE, _one_off_word
from zsclip.world.spec import COLOURS
from zsclip.world.train import TrainConfig, train

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def world():
    return build_world()


@pytest.fixture(scope="module")
def corpus(world):
    return build_corpus(world)


@pytest.fixture(scope="module")
def counts(world, corpus):
    phrases = {p for s in world.species for p in (s.name, *s.synonyms)}
    return synonym_counts(corpus.column("caption").to_pylist(), phrases)


def test_world_is_deterministic_and_fine_grained(world):
    again = build_world()
    assert [(s.name, s.attributes, s.tier, s.synonyms) for s in again.species] == [
        (s.name, s.attributes, s.tier, s.synonyms) for s in world.species
    ]
    assert len(world.species) == 100
    assert len({s.name for s in world.species}) == 100
    assert len({tuple(sorted(s.attributes.items())) for s in world.species}) == 100
    # relatives share the genus's shape and part and differ from each other in at most 4 attributes
    for a in world.species:
        for b in world.species:
            if a.genus == b.genus and a.index < b.index:
                assert a.attributes["shape"] == b.attributes["shape"]
                assert a.attributes["part"] == b.attributes["part"]
                assert sum(a.attributes[k] != b.attributes[k] for k in a.attributes) <= 4
    assert world.tier_counts == {"head": 20, "mid": 35, "tail": 20, "nickname": 12, "never": 13}


def test_render_is_deterministic_and_depends_on_species(world):
    seed = 12345
    a = np.asarray(render(instance_attributes(world, 0, seed), "photo", seed))
    b = np.asarray(render(instance_attributes(world, 0, seed), "photo", seed))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    other = np.asarray(render(instance_attributes(world, 50, seed), "photo", seed))
    assert not np.array_equal(a, other)
    for style in ("painting", "cartoon", "pixel", "sketch"):
        styled = np.asarray(render(instance_attributes(world, 0, seed), style, seed))
        assert styled.shape == (64, 64, 3) and not np.array_equal(styled, a)


def test_corpus_tiers_and_name_frequencies(world, corpus, counts):
    per_species = Counter(corpus.column("species").to_pylist())
    for s in world.species:
        lo, hi = TIERS[s.tier]["images"]
        assert lo <= per_species[s.index] <= hi
    assert corpus.column("render_seed").to_pylist() == list(range(corpus.num_rows))

    def official(tier: str) -> list[int]:
        return [counts[s.name] for s in world.by_tier(tier)]

    assert min(official("head")) > 800
    assert min(official("head")) > max(official("mid")) > max(official("tail"))
    assert all(1 <= c <= 60 for c in official("tail"))
    for s in world.by_tier("nickname"):
        assert counts[s.nickname] > 3 * counts[s.name] > 0
    for s in world.by_tier("never"):
        assert counts[s.name] == 0
        assert all(counts[syn] == 0 for syn in s.synonyms)
    traps = [s for s in world.species if s.trap_synonym]
    assert len(traps) == 10
    for s in traps:
        assert set(s.trap_synonym.split()) < set(s.name.split())
        assert counts[s.trap_synonym] > 10 * counts[s.name]


def test_corpus_styles_and_captions(corpus):
    styles = Counter(corpus.column("style").to_pylist())
    majority = styles.most_common(1)[0][0]
    assert majority == "photo" and EVAL_STYLE != majority
    assert styles[EVAL_STYLE] > 0.05 * corpus.num_rows
    caption = corpus.column("caption").to_pylist()
    assert any("sketch of" in c for c in caption)
    assert corpus.num_rows > 90_000


def test_corpus_relative_clause_captions(world, corpus):
    captions = corpus.column("caption").to_pylist()
    names = corpus.column("name_used").to_pylist()
    species = corpus.column("species").to_pylist()
    attributes = corpus.column("attributes").to_pylist()
    relative = [", which " in c for c in captions]
    assert abs(sum(relative) / len(captions) - P_RELATIVE_CLAUSE) < 0.01
    # used for named and unnamed individuals alike, in every tier
    for named in (True, False):
        rows = [r for r, n in zip(relative, names, strict=True) if bool(n) == named]
        assert abs(sum(rows) / len(rows) - P_RELATIVE_CLAUSE) < 0.02
    tier_of = [world.species[s].tier for s in species]
    for tier in TIERS:
        rows = [r for r, t in zip(relative, tier_of, strict=True) if t == tier]
        assert abs(sum(rows) / len(rows) - P_RELATIVE_CLAUSE) < 0.05
    forms = Counter(c.split(", which ", 1)[1].split()[0] for c, r in zip(captions, relative, strict=True) if r)
    assert {"has", "is", "lives"} <= set(forms)
    assert any(c.startswith(f"{n}, which ") for c, n in zip(captions, names, strict=True) if n)
    # one-off words before the noun of unnamed captions are never a word of a species' names
    name_words = {w for s in world.species for n in (s.name, *s.synonyms) for w in n.split()}
    one_off = {_one_off_word(world, s % 100, s) for s in range(2000)}
    assert len(one_off) > 1900 and not one_off & name_words
    # captions only state what the individual shows: every colour word is its colour
    colours = set(COLOURS)
    for caption, attrs in zip(captions[:20000], attributes[:20000], strict=True):
        said = colours & set(caption.replace(",", " ").split())
        assert said <= {json.loads(attrs)["colour"]}, caption
    # captions share vocabulary with the LLM-like descriptors, not their sentences
    cbd, _ = descriptors(world)
    long_descriptors = {d for ds in cbd.values() for d in ds if len(d.split()) >= 4}
    assert not any(d in c for c in captions[:20000] for d in long_descriptors)


def test_committed_prompt_files_match_the_world(world, corpus):
    folder = resource_dir("prompts") / "toyworld"
    cbd, truth = descriptors(world)
    shipped = json.loads((folder / "descriptors.json").read_text())
    assert list(shipped) == world.classnames
    assert shipped == cbd
    shipped_truth = json.loads((folder / "descriptors_truth.json").read_text())
    kinds = Counter(item["kind"] for items in shipped_truth.values() for item in items)
    assert set(kinds) == {"true", "generic", "wrong"}
    assert kinds["true"] > kinds["generic"] > 0 and kinds["wrong"] > 0
    synonyms = json.loads((folder / "synonyms.json").read_text())
    assert synonyms == real_synonyms(world, corpus.column("caption").to_pylist())
    nick = world.by_tier("nickname")[0]
    assert synonyms[str(nick.index)]["most_common_name"] == nick.nickname
    card = json.loads((resource_dir("datasets") / "toyworld.json").read_text())
    assert card["classnames"] == world.classnames


def test_committed_model_loads_through_open_clip_local_dir():
    import open_clip

    size = sum(p.stat().st_size for p in MODEL_DIR.iterdir())
    assert size <= 10 * 1024 * 1024
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{MODEL_DIR}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{MODEL_DIR}")
    model.eval()
    ds = get_dataset("toyworld")
    image = preprocess(ds.load_image(ds.samples("val")[0])).unsqueeze(0)
    with torch.no_grad():
        img = model.encode_image(image, normalize=True)
        txt = model.encode_text(tokenizer(["a sketch of a red creature", ds.classnames[0]]), normalize=True)
    assert img.shape == (1, 64) and txt.shape == (2, 64)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    # zsclip loads the same model to the same numbers, and it is the trained one: the class-name prompt finds the
    # class of most of 200 validation images (58% on the whole split; 1% is chance among 100 classes)
    encoder = load_model(f"local-dir:{MODEL_DIR}", device="cpu")
    np.testing.assert_allclose(encoder.encode_images(image), img.numpy(), atol=1e-5)
    val = ds.samples("val")[:200]
    images = encoder.encode_images(torch.stack([encoder.preprocess(ds.load_image(s)) for s in val]))
    names = encoder.encode_texts([f"a photo of a {c}." for c in ds.classnames])
    top1 = float(((images @ names.T).argmax(axis=1) == np.array([s.label for s in val])).mean())
    assert top1 > 0.3


def test_toyworld_dataset_splits():
    ds = get_dataset("toyworld")
    assert ds.splits == ("train", "val", "test") and ds.root is None
    assert ds.card["domain_words"][0] == "creature"
    seeds = {}
    for split in ds.splits:
        samples = ds.samples(split)
        per_label = Counter(s.label for s in samples)
        assert sorted(per_label) == list(range(len(ds.classnames)))
        assert len(set(per_label.values())) == 1
        seeds[split] = {ds.render_seed(split, int(s.path.split("/")[1])) for s in samples}
        assert all(s.path.startswith(f"toyworld:{split}/") for s in samples)
    assert not seeds["train"] & seeds["val"] and not seeds["val"] & seeds["test"]
    assert not seeds["train"] & seeds["test"]
    assert min(min(v) for v in seeds.values()) >= CORPUS_SEED_LIMIT
    sample = ds.samples("test")[7]
    a, b = np.asarray(ds.load_image(sample)), np.asarray(ds.load_image(sample))
    assert np.array_equal(a, b) and a.shape == (64, 64, 3)
    assert ds.style == EVAL_STYLE
    assert len(ds.attribute_descriptors()[ds.classnames[0]]) == 7


def test_training_is_reproducible_and_writes_a_local_dir(world, tmp_path):
    import open_clip

    table = build_corpus(world, scale=0.003)
    cfg = TrainConfig(steps=2, batch_size=16, warmup_steps=1, render_workers=1)
    train(table, tmp_path / "work", tmp_path / "m1", cfg)
    train(table, tmp_path / "work", tmp_path / "m2", cfg)
    w1 = (tmp_path / "m1" / "open_clip_model.safetensors").read_bytes()
    assert w1 == (tmp_path / "m2" / "open_clip_model.safetensors").read_bytes()
    config = json.loads((tmp_path / "m1" / "open_clip_config.json").read_text())
    assert {"model_cfg", "preprocess_cfg"} <= set(config)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'm1'}")
    assert not (tmp_path / "work" / "checkpoint.pt").exists()


def test_cli_generate_and_info(tmp_path):
    from typer.testing import CliRunner

    from zsclip.world.cli import app

    runner = CliRunner()
    args = ["generate", "--scale", "0.003", "--out", str(tmp_path / "out"), "--prompts", str(tmp_path / "p"),
            "--card", str(tmp_path / "card.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "corpus.parquet").is_file()
    assert {p.name for p in (tmp_path / "p").iterdir()} == {
        "descriptors.json", "descriptors_truth.json", "synonyms.json", "world.json"}
    result = runner.invoke(app, ["info", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "never" in result.output and "captions" in result.output


def test_corpus_counts_equal_the_worlds_ground_truth(world, corpus):
    """zsclip's REAL counter, run on the captions, gives exactly the frequencies the world wrote them with."""
    from zsclip.world.corpus import caption_truth

    truth, actual = caption_truth(world, corpus)
    metrics = real_synonyms(world, corpus.column("caption").to_pylist())
    for s in world.species:
        entry = metrics[str(s.index)]
        assert entry["alternates"] == {n: truth[n] for n in (s.name, *s.synonyms)}
        assert entry["actual_freq"] == actual[s.index]
    assert all(truth[s.name] == 0 and actual[s.index] == 0 for s in world.by_tier("never"))
    nick = world.by_tier("nickname")[0]
    assert truth[nick.nickname] > truth[nick.name] > 0


def test_corpus_export_in_clip_retrieval_layout(world, tmp_path, monkeypatch):
    """`zsclip world corpus` writes aligned metadata / image / text embeddings that `zsclip corpus count` reads."""
    from typer.testing import CliRunner

    from zsclip.cli import app
    from zsclip.corpus import Corpus
    from zsclip.corpus_count import count_corpus
    from zsclip.errors import ZsclipError
    from zsclip.models import load_model
    from zsclip.world.corpus import caption_truth, export_corpus, world_classes

    monkeypatch.setenv("ZSCLIP_HOME", str(tmp_path / "home"))
    out = tmp_path / "export"
    runner = CliRunner()
    args = ["world", "corpus", "--out", str(out), "--scale", "0.003", "--limit", "90", "--shard-rows", "40",
            "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = build_corpus(world, scale=0.003).slice(0, 90)
    corpus = Corpus.open(out)
    assert corpus.layout == "clip-retrieval" and [s.rows for s in corpus.shards] == [40, 40, 10]
    meta = corpus.read_columns(1, ["caption", "image_path", "species", "tier"]).to_pylist()
    row = table.slice(40, 1).to_pylist()[0]
    assert meta[0] == {"caption": row["caption"], "image_path": f"toyworld-corpus:{row['render_seed']}",
                       "species": row["species"], "tier": world.species[row["species"]].tier}
    img, txt = corpus.embeddings(np.arange(90), "image"), corpus.embeddings(np.arange(90), "text")
    assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (90, 64)
    assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=1e-2)
    encoder = load_model("toyworld", None, device="cpu")
    pixels = torch.stack([encoder.preprocess(render(json.loads(r["attributes"]), r["style"], r["render_seed"]))
                          for r in table.slice(41, 2).to_pylist()])
    assert np.allclose(img[41:43], encoder.encode_images(pixels), atol=2e-3)
    assert np.allclose(txt[:5], encoder.encode_texts(table.column("caption").to_pylist()[:5]), atol=2e-3)
    # counts from the exported corpus equal the world's ground truth for those rows, exactly
    result = count_corpus(corpus, world_classes(world), workers=1, use_cache=False)
    truth, actual = caption_truth(world, table)
    for i, s in enumerate(world.species):
        assert result.alternates(i) == {n: truth[n] for n in (s.name, *s.synonyms)}
        assert result.class_counts[i] == actual[s.index]
    # a second export resumes (nothing re-encoded); another shard size in the same folder is refused
    again = export_corpus(world, table, out, encoder, shard_rows=40, workers=1)
    assert again["rows_encoded"] == 0 and again["complete"]
    with pytest.raises(ZsclipError, match="holds another export"):
        export_corpus(world, table, out, encoder, shard_rows=30, workers=1)


def test_rewriting_the_table_keeps_the_sections_below_the_marker():
    """`zsclip world table --write` replaces the table and keeps the prompt-search section written below it."""
    from zsclip.claims import KEPT_MARKER, keep_sections

    old = f"# table\n\n| old | 1 |\n\n{KEPT_MARKER}\n\n## Prompt search\n\n| run | 65.0 |\n"
    new = "# table\n\n| new | 2 |\n"
    merged = keep_sections(new, old)
    assert merged == f"# table\n\n| new | 2 |\n\n{KEPT_MARKER}\n\n## Prompt search\n\n| run | 65.0 |\n"
    assert "| old | 1 |" not in merged
    assert keep_sections(new, "# a file without the marker\n") == new
    assert keep_sections(new, "") == new
    assert keep_sections(new, merged) == merged  # writing the same table again changes nothing
