"""Caption corpora and REAL's name counts: layouts, errors, the FTS5 equality, caching, the CLI end to end."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.corpus import Corpus
from zsclip.corpus_count import (
    ClassNames,
    PhraseMatcher,
    count_captions,
    count_corpus,
    count_names,
    count_shard,
    match_rows,
    read_synonyms,
)
from zsclip.errors import ZsclipError
from zsclip.unicode61 import scan_sqlite, tokenize

runner = CliRunner()


# ------------------------------------------------------------------------------------------------------------
# the authors' index and queries (NeglectedTailsVLM analysis/laion/laion_parser.py), reproduced as the oracle
def authors_clean(text: str) -> str:
    return text.strip().replace("'", "").replace('"', "").replace("-", " ").replace("_", " ").replace("  ", " ").lower()


def authors_query(name: str, prefix: str | None) -> str:
    """The MATCH expression their code builds for a name (clean twice, ' ' -> ' + ', quoted on . / ())."""
    text = authors_clean(authors_clean(name)).replace(" ", " + ")
    if "(" in text and ")" in text:
        text = text.replace("(", "").replace(")", "")
    if prefix is not None:
        text = prefix + " " + text
    if ("(" in text and ")" in text) or "." in text or "/" in text:
        return f'"{text}"'
    return text


def phrase_query(name: str, prefix: str | None) -> str:
    """A correct FTS5 query for the same semantics: the cleaned name as one quoted phrase, AND the prefix."""
    phrase = '"' + authors_clean(name).replace('"', '""') + '"'
    return phrase if prefix is None else f'"{prefix}" AND {phrase}'


def fts_table(captions: list[str]) -> sqlite3.Connection:
    """Their index: FTS5 (default unicode61 tokenizer) over the normalised captions."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE fts USING FTS5(TEXT)")
    norm = [c.replace('"', "").replace("'", "").replace("-", " ").replace("_", " ") for c in captions]
    db.executemany("INSERT INTO fts (TEXT) VALUES (?)", [(c,) for c in norm])
    return db


def fts_rows(db: sqlite3.Connection, query: str) -> set[int]:
    return {r[0] for r in db.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (query,))}


WORDS = ["albatross", "albatrosses", "Albatross", "black-footed", "Black_Footed", "footed", "black", "don't",
         "dont", "O'Neil", '"quoted"', "crème", "CRÈME", "brûlée", "brulee", "Zürich", "zurich", "naïve", "AT&T",
         "at", "t", "R&B", "c++", "c", "St.", "Louis", "St.Louis", "5:00", "x*y", "xy", "xylem", "y", "e\u0301te",
         "ete", "ß", "ss", "İstanbul", "parrot🦜", "parrot", "🐦", "日本", "über", "satellite", "Satellite-image",
         "image", "rock_n_roll", "rock", "n", "roll", "hot-dog", "hot", "dog", "mcdonald's", "mcdonalds", ",", ".", "!",
         "(b)", "a", "b", "-", "σ", "Σ", "ǅ", "２"]
NAMES = ["albatross", "black footed albatross", "black-footed albatross", "Black_Footed", "dont", "don't", "oneil",
         "quoted", '"quoted"', "creme brulee", "crème brûlée", "zurich", "naive", "AT&T", "at t", "R&B", "c++",
         "st. louis", "st louis", "St.Louis", "5:00", "x*y", "ete", "ß", "ss", "istanbul", "parrot", "parrot🦜",
         "日本", "uber", "satellite image", "rock n roll", "rock - n - roll", "hot dog", "mcdonald's", "a (b)",
         "a (b", "&", "", "σ", "ǆ", "2", "２", "image"]


def generated_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    joins = [" ", " ", " ", "-", "_", ", ", "  ", " - ", "/", ""]
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 9))]
        text = words[0]
        for w in words[1:]:
            text += rng.choice(joins) + w
        out.append(text)
    return out


def authors_outcome(db: sqlite3.Connection, name: str, prefix: str | None) -> set[int] | None:
    """The rows their query returns, or None when it raises (their code swallows it: the count is lost)."""
    try:
        return fts_rows(db, authors_query(name, prefix))
    except sqlite3.OperationalError:
        return None


#: names whose authors' query raises an FTS5 error (swallowed in their code: the name's count is lost):
#: '&', ':' (read as a column filter), '+' ('c++'), an unbalanced '(', a bare '&' and the empty name
AUTHORS_CRASH = {"AT&T", "R&B", "c++", "5:00", "a (b", "&", ""}
#: names whose authors' query runs but means something else: '*' is FTS5's prefix operator ("x*y" is "x*"
#: followed by "y"), so it counts other captions
AUTHORS_DIFFERENT = {"x*y"}


@pytest.mark.parametrize("prefix", [None, "satellite"])
def test_counts_equal_sqlite_fts5(prefix):
    captions = generated_captions(3000, seed=1 if prefix is None else 2)
    db = fts_table(captions)
    classes = [ClassNames(str(i), n or "(empty)", [n]) for i, n in enumerate(NAMES)]
    result = count_captions(captions, classes, prefix=prefix)
    crashed, different = set(), set()
    for i, name in enumerate(NAMES):
        ours = result.alternates(i)[name]
        if name.strip("&") == "":
            assert ours == 0  # no token: nothing to match (FTS5 cannot even parse the query)
        else:
            assert ours == len(fts_rows(db, phrase_query(name, prefix))), name
        assert result.class_counts[i] == ours
        theirs = authors_outcome(db, name, prefix)
        if theirs is None:
            crashed.add(name)
        elif len(theirs) != ours:
            different.add(name)
    expected_different = set(AUTHORS_DIFFERENT)
    if prefix is not None:
        # their quoted branch ('.', '/') glues the prefix to the name as one phrase: "satellite st louis"
        expected_different |= {n for n in NAMES if n not in AUTHORS_CRASH and ("." in n or "/" in n)
                               and len(fts_rows(db, phrase_query(n, prefix)))}
        # and the empty name becomes the query "satellite": every caption with the prefix counts for it
        expected_different.add("")
    assert crashed == (AUTHORS_CRASH if prefix is None else AUTHORS_CRASH - {""})
    assert different == expected_different
    # every name's matches are real: nothing is counted that FTS5 does not find, for names it can query
    assert sum(result.alternates(i)[n] for i, n in enumerate(NAMES)) > 1000


def test_actual_freq_counts_distinct_captions_across_names():
    captions = ["a hot dog and a hot-dog", "hot dogs", "HotDog", "a hot dog stand", "sausage in bun", "dog"]
    classes = [ClassNames("0", "hot dog", ["hot dog", "hotdog", "sausage in bun", "hot dog stand"])]
    result = count_captions(captions, classes)
    assert result.alternates(0) == {"hot dog": 2, "hotdog": 1, "sausage in bun": 1, "hot dog stand": 1}
    assert result.class_counts[0] == 4  # "hot dogs" does not match (no stemming); the stand caption counted once
    metrics = result.metrics()
    assert metrics["0"]["actual_freq"] == 4 and metrics["0"]["most_common_name"] == "hot dog"


def test_tokenizer_table_equals_running_sqlite():
    from zsclip._unicode61_table import RUNS

    starts = [int(r.split(":")[0], 16) for r in RUNS.split(",")]
    rng = random.Random(0)
    sample = set(range(0x3000)) | {s + d for s in starts for d in (-1, 0, 1) if 0 <= s + d < 0x110000}
    sample |= {rng.randrange(0x110000) for _ in range(20000)}
    for cp, folded in scan_sqlite(sorted(sample)).items():
        if cp in (0x22, 0x27):  # REAL deletes quotes before tokenising
            continue
        expected = ["qq", "zz"] if folded is None else [f"qq{folded}zz"]
        assert tokenize(f"qq{chr(cp)}zz") == expected, hex(cp)
    assert tokenize("Don't STOP-believin' ÉTÉ e\u0301te parrot🦜 bird🐦 İ ß") == [
        "dont", "stop", "believin", "ete", "ete", "parrot🦜", "bird", "i", "ß"]


_TOKENS = ["a", "b", "ab", "A", "é", "e\u0301", "ß", "1", "x", "Ab", "É", "🦜", "ǅ", "ı"]
_SEPARATORS = [" ", "-", "_", "'", '"', ",", ".", "&", "  ", "🐦", "*", ""]


@st.composite
def _texts(draw, max_tokens: int) -> str:
    tokens = draw(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=max_tokens))
    seps = draw(st.lists(st.sampled_from(_SEPARATORS), min_size=len(tokens), max_size=len(tokens)))
    return "".join(s + t for s, t in zip(seps, tokens))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captions=st.lists(_texts(8), min_size=1, max_size=30), names=st.lists(_texts(3), min_size=1, max_size=6),
       prefix=st.sampled_from([None, "a", "b"]))
def test_property_counts_equal_fts5(captions, names, prefix):
    db = fts_table(captions)
    classes = [ClassNames(str(i), n, [n]) for i, n in enumerate(names)]
    result = count_captions(captions, classes, prefix=prefix)
    for i, name in enumerate(names):
        expected = len(fts_rows(db, phrase_query(name, prefix))) if tokenize(name) else 0
        assert result.alternates(i)[name] == expected, (name, captions)


def test_matcher_handles_shared_prefixes_and_caption_boundaries():
    matcher = PhraseMatcher([("hot",), ("hot", "dog"), ("hot", "dog", "stand"), ("dog", "hot")])
    phrase, row = matcher.match(pa.array(["hot", "dog hot dog", None, "stand", "HOT DOG STAND", ""]))
    found = sorted(zip(phrase.tolist(), row.tolist()))
    # "hot" ending caption 0 and "dog" starting caption 1 never form "hot dog"
    assert found == [(0, 0), (0, 1), (0, 4), (1, 1), (1, 4), (2, 4), (3, 1)]
    assert count_names(["Dog-hot"], ["dog hot", "hot"]) == {"dog hot": 1, "hot": 1}
    # batches that are slices of one array (non-zero offsets), ASCII and non-ASCII mixed, count the same
    captions = generated_captions(500, seed=5)
    assert count_names(captions, NAMES, batch_rows=7) == count_names(captions, NAMES)


# ------------------------------------------------------------------------------------------------------------
# LAION layouts, generated in the test
def write_raw_laion(folder: Path, shards: list[list[str]], nsfw: list[list[str]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, texts in enumerate(shards):
        flags = nsfw[k] if nsfw else ["UNLIKELY"] * len(texts)
        table = pa.table({"URL": [f"https://example.org/{k}/{i}.jpg" for i in range(len(texts))], "TEXT": texts,
                          "NSFW": flags, "similarity": np.full(len(texts), 0.3), "LICENSE": ["?"] * len(texts)})
        pq.write_table(table, folder / f"part-{k:05d}-5114fd87-c000.snappy.parquet", row_group_size=7)
    return folder


def _unit_rows(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def write_clip_retrieval(folder: Path, shards: list[list[str]], text_emb: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for kind in ("metadata", "img_emb", "text_emb") if text_emb else ("metadata", "img_emb"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for k, texts in enumerate(shards):
        n = len(texts)
        table = pa.table({"image_path": [f"{k:05d}{i:04d}.jpg" for i in range(n)], "caption": texts,
                          "url": [f"https://example.org/{k}/{i}" for i in range(n)],
                          "key": [f"{k}{i}" for i in range(n)]})
        pq.write_table(table, folder / "metadata" / f"metadata_{k}.parquet")
        np.save(folder / "img_emb" / f"img_emb_{k}.npy", _unit_rows(rng, n))
        if text_emb:
            np.save(folder / "text_emb" / f"text_emb_{k}.npy", _unit_rows(rng, n))
    return folder


def write_synonyms(path: Path, per_class: dict[str, list[str]]) -> Path:
    data = {str(i): {"name": c, "alternates": {s: None for s in [c, *syns]}, "most_common_name": c}
            for i, (c, syns) in enumerate(per_class.items())}
    path.write_text(json.dumps(data))
    return path


SYNONYMS = {"black-footed albatross": ["albatross", "gooney bird"], "St. Louis": ["st louis"],
            "AT&T": ["at&t"], "moa": ["dinornis"]}


@pytest.fixture()
def laion(tmp_path):
    captions = generated_captions(120, seed=3) + ["a gooney bird", "AT&T tower in St. Louis", "Gooney-Bird!"]
    shards = [captions[:50], captions[50:51], captions[51:]]
    nsfw = [["NSFW" if i % 5 == 0 else ("UNSURE" if i % 5 == 1 else "UNLIKELY") for i in range(len(s))]
            for s in shards]
    raw = write_raw_laion(tmp_path / "laion", shards, nsfw)
    clip = write_clip_retrieval(tmp_path / "embeddings", shards)
    return {"captions": captions, "shards": shards, "nsfw": nsfw, "raw": raw, "clip": clip,
            "synonyms": write_synonyms(tmp_path / "synonyms.json", SYNONYMS), "home": tmp_path}


@pytest.mark.parametrize("layout", ["raw", "clip"])
def test_cli_count_end_to_end(laion, layout, monkeypatch):
    monkeypatch.setenv("ZSCLIP_HOME", str(laion["home"] / "home"))
    out = laion["home"] / f"metrics-{layout}.json"
    result = runner.invoke(app, ["corpus", "count", "--corpus", str(laion[layout]), "--synonyms",
                                 str(laion["synonyms"]), "--output", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    classes = read_synonyms(laion["synonyms"])
    expected = count_captions(laion["captions"], classes).metrics()
    assert metrics == expected
    assert metrics["0"]["alternates"]["gooney bird"] == 2 and metrics["2"]["alternates"]["AT&T"] >= 1
    assert metrics["3"]["actual_freq"] == 0 and "moa" in result.output  # reported, not a crash
    provenance = json.loads(out.with_suffix(".provenance.json").read_text())
    assert provenance["classes_without_matches"] == ["moa"]
    assert provenance["captions_read"] == len(laion["captions"]) and len(provenance["corpus"]["shards"]) == 3
    # the same count again reads nothing
    again = runner.invoke(app, ["corpus", "count", "--corpus", str(laion[layout]), "--synonyms",
                                str(laion["synonyms"]), "--output", str(out)])
    assert again.exit_code == 0 and "3 of 3 shards from saved counts" in again.output
    assert json.loads(out.read_text()) == expected


def test_nsfw_filter_and_prefix(laion, tmp_path):
    classes = read_synonyms(laion["synonyms"])
    kept = [c for s, flags in zip(laion["shards"], laion["nsfw"]) for c, f in zip(s, flags)
            if f not in ("NSFW", "UNSURE")]
    for nsfw_filter, drop in (("nsfw", {"NSFW"}), ("unsure", {"NSFW", "UNSURE"})):
        corpus = Corpus.open(laion["raw"], nsfw_filter=nsfw_filter)
        result = count_corpus(corpus, classes, workers=1, use_cache=False)
        kept = [c for s, flags in zip(laion["shards"], laion["nsfw"]) for c, f in zip(s, flags) if f not in drop]
        assert result.kept == len(kept) and result.rows == len(laion["captions"])
        assert result.metrics() == count_captions(kept, classes).metrics()
    corpus = Corpus.open(laion["raw"])
    with_prefix = count_corpus(corpus, classes, prefix="satellite", workers=1, use_cache=False)
    assert with_prefix.metrics() == count_captions(laion["captions"], classes, prefix="satellite").metrics()
    without = count_corpus(corpus, classes, workers=1, use_cache=False)
    assert with_prefix.phrase_counts.sum() < without.phrase_counts.sum()
    with pytest.raises(ZsclipError, match="NSFW column"):
        Corpus.open(laion["clip"], nsfw_filter="nsfw")


def test_corpus_rows_and_embeddings(laion):
    corpus = Corpus.open(laion["clip"])
    assert corpus.layout == "clip-retrieval" and corpus.caption_column == "caption"
    assert [s.rows for s in corpus.shards] == [50, 1, 72] and corpus.num_rows == 123
    assert corpus.has_image_embeddings and corpus.has_text_embeddings
    shard, local = corpus.locate([0, 49, 50, 51, 122])
    assert shard.tolist() == [0, 0, 1, 2, 2] and local.tolist() == [0, 49, 0, 0, 71]
    rows = [122, 0, 50, 60]
    img = corpus.embeddings(rows)
    assert img.dtype == np.float16
    files = [np.load(laion["clip"] / "img_emb" / f"img_emb_{k}.npy") for k in range(3)]
    assert np.array_equal(img, np.stack([files[2][71], files[0][0], files[1][0], files[2][9]]))
    assert corpus.captions(rows) == [laion["captions"][r] for r in rows]
    batches = list(corpus.batches(2, batch_rows=20))
    assert [b.start for b in batches] == [0, 20, 40, 60] and sum(b.rows for b in batches) == 72
    classes = read_synonyms(laion["synonyms"])
    found = match_rows(corpus, classes)
    counted = count_captions(laion["captions"], classes)
    for i, per_name in enumerate(found):
        assert {n: len(r) for n, r in per_name.items()} == counted.alternates(i)
        for r in per_name.get("gooney bird", []):
            assert "gooney" in laion["captions"][r].lower()
    manifest = corpus.manifest()
    assert manifest["layout"] == "clip-retrieval" and manifest["shards"][2]["img_emb"] == "img_emb/img_emb_2.npy"


def test_interrupted_count_resumes_and_changes_invalidate(laion, tmp_path):
    corpus = Corpus.open(laion["raw"])
    classes = read_synonyms(laion["synonyms"])
    cache = tmp_path / "cache"
    from zsclip.corpus_count import CountPlan

    count_shard(corpus, 1, CountPlan.build(classes), cache)  # as if a count stopped after one shard
    first = count_corpus(corpus, classes, workers=1, cache_dir=cache)
    assert (first.shards_cached, first.shards_counted) == (1, 2)
    assert first.metrics() == count_captions(laion["captions"], classes).metrics()
    second = count_corpus(corpus, classes, workers=1, cache_dir=cache)
    assert (second.shards_cached, second.shards_counted) == (3, 0) and second.metrics() == first.metrics()
    other_names = count_corpus(corpus, classes[:2], workers=1, cache_dir=cache)
    assert other_names.shards_counted == 3
    path = corpus.shards[0].path
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    touched = count_corpus(Corpus.open(laion["raw"]), classes, workers=1, cache_dir=cache)
    assert (touched.shards_cached, touched.shards_counted) == (2, 1)
    prefixed = count_corpus(corpus, classes, prefix="satellite", workers=1, cache_dir=cache)
    assert prefixed.shards_counted == 3


def test_bad_inputs_give_clear_errors(tmp_path, laion):
    # missing caption column: the message lists the columns present
    write_raw_laion(tmp_path / "nocap", [["a", "b"]])
    with pytest.raises(ZsclipError, match=r"no caption column 'caption'.*URL, TEXT, NSFW"):
        Corpus.open(tmp_path / "nocap", caption_column="caption")
    pq.write_table(pa.table({"url": ["u"], "title": ["t"]}), tmp_path / "nocap2.parquet")
    with pytest.raises(ZsclipError, match=r"no caption column \(looked for TEXT, caption\).*url, title"):
        Corpus.open(tmp_path / "nocap2.parquet")
    # misaligned embedding shard: the message names the file and both row counts
    bad = write_clip_retrieval(tmp_path / "misaligned", [["a"] * 5, ["b"] * 4])
    np.save(bad / "img_emb" / "img_emb_1.npy", _unit_rows(np.random.default_rng(1), 3))
    with pytest.raises(ZsclipError,
                       match=r"misaligned shard: .*img_emb_1\.npy holds 3 rows .*metadata_1\.parquet holds 4"):
        Corpus.open(bad)
    # missing shard, either side
    missing = write_clip_retrieval(tmp_path / "missing", [["a"] * 5, ["b"] * 4])
    (missing / "text_emb" / "text_emb_1.npy").unlink()
    with pytest.raises(ZsclipError, match=r"missing shard: .*text_emb_1\.npy for metadata_1\.parquet \(4 rows\)"):
        Corpus.open(missing)
    extra = write_clip_retrieval(tmp_path / "extra", [["a"] * 5, ["b"] * 4])
    (extra / "metadata" / "metadata_0.parquet").unlink()
    with pytest.raises(ZsclipError, match=r"missing shard: .*img_emb_0\.npy \(5 rows\) has no metadata shard"):
        Corpus.open(extra)
    # empty corpus: no shards, or shards without rows
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsclipError, match="empty corpus: no parquet shards"):
        Corpus.open(tmp_path / "empty")
    write_raw_laion(tmp_path / "norows", [[]])
    with pytest.raises(ZsclipError, match="empty corpus: the 1 shard"):
        Corpus.open(tmp_path / "norows")
    with pytest.raises(ZsclipError, match="corpus not found"):
        Corpus.open(tmp_path / "nowhere")
    # the CLI prints one line and exits 2
    result = runner.invoke(app, ["corpus", "count", "--corpus", str(bad), "--synonyms", str(laion["synonyms"]),
                                 "--output", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and "misaligned shard" in result.output
    (tmp_path / "broken.json").write_text('{"0": {"alternates": {}}}')
    result = runner.invoke(app, ["corpus", "count", "--corpus", str(laion["raw"]), "--synonyms",
                                 str(tmp_path / "broken.json"), "--output", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and "\"name\" string" in result.output


def test_cli_info(laion):
    result = runner.invoke(app, ["corpus", "info", "--corpus", str(laion["clip"]), "--manifest",
                                 str(laion["home"] / "manifest.json")])
    assert result.exit_code == 0, result.output
    assert "clip-retrieval" in result.output and "123 rows" in result.output and "8-d float16" in result.output
    assert json.loads((laion["home"] / "manifest.json").read_text())["rows"] == 123
    result = runner.invoke(app, ["corpus", "info", "--corpus", str(laion["raw"])])
    assert result.exit_code == 0 and "laion-metadata" in result.output and "TEXT" in result.output
