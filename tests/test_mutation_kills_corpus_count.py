"""Caption counting's file formats and reports, pinned where mutation testing found them loose: synonym files,
the metrics REAL reads (most common name, ties, extra fields), the provenance, batching and prefix words.

(A separate file from ``test_corpus.py``, which is edited alongside the counter's speed work.)
"""

from __future__ import annotations

import json

import pytest

from zsclip.corpus_count import CountPlan, classes_from_mapping, count_captions, read_synonyms
from zsclip.errors import ZsclipError

CAPTIONS = ["a red fox in snow", "the grey wolf howls", "Fox and wolf", "a photo of a vixen", "wolf wolf wolf",
            "nothing here", "a red-fox cub"]


def test_synonym_files_give_classes_in_file_order_with_the_official_name_counted(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({
        "0": {"name": "fox", "alternates": {"vixen": 3, "red fox": None}, "most_common_name": "vixen",
              "actual_freq": 9, "wiki": "Fox"},
        "1": {"name": "wolf", "alternates": ["wolf", "grey wolf", "wolf"]},
        "2": {"name": "owl"},
    }))
    classes = read_synonyms(path)
    assert [(c.key, c.name, c.names, c.extra) for c in classes] == [
        ("0", "fox", ["fox", "vixen", "red fox"], {"wiki": "Fox"}),  # official name first; REAL's fields dropped
        ("1", "wolf", ["wolf", "grey wolf"], {}),  # listed once
        ("2", "owl", ["owl"], {}),
    ]


@pytest.mark.parametrize("content, message", [
    ([], "expected a JSON object"),
    ({}, "expected a JSON object"),
    ({"0": "fox"}, "class '0': expected an object with a \"name\" string"),
    ({"0": {"name": 3}}, "class '0': expected an object with a \"name\" string"),
    ({"0": {"name": "fox", "alternates": "vixen"}}, "class '0': \"alternates\" must be an object {name: count} or "
                                                    "a list, got str"),
])
def test_bad_synonym_files_name_the_file_and_the_class(tmp_path, content, message):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ZsclipError, match="synonym file .*syn.json") as info:
        read_synonyms(path)
    assert message in str(info.value)


def test_classes_from_a_mapping_are_keyed_in_order_with_the_name_first():
    classes = classes_from_mapping({"fox": ["vixen", "fox"], "wolf": []})
    assert [(c.key, c.name, c.names) for c in classes] == [("0", "fox", ["fox", "vixen"]), ("1", "wolf", ["wolf"])]


def test_metrics_are_reals_format_with_the_most_common_name_and_ties_to_the_official_name():
    classes = classes_from_mapping({"fox": ["vixen", "red fox"], "wolf": ["grey wolf"], "owl": ["&"]})
    classes[0].extra["wiki"] = "Fox"
    result = count_captions(CAPTIONS, classes)
    metrics = result.metrics()
    assert metrics["0"] == {"name": "fox", "alternates": {"fox": 3, "vixen": 1, "red fox": 2},
                            "most_common_name": "fox", "actual_freq": 4, "wiki": "Fox"}
    assert metrics["1"] == {"name": "wolf", "alternates": {"wolf": 3, "grey wolf": 1}, "most_common_name": "wolf",
                            "actual_freq": 3}
    assert metrics["2"]["alternates"] == {"owl": 0, "&": 0} and metrics["2"]["most_common_name"] == "owl"
    assert result.unmatched_classes() == ["owl"]
    tie = count_captions(["a vixen", "a fox"], classes_from_mapping({"fox": ["vixen"]})).metrics()["0"]
    assert tie["most_common_name"] == "fox"  # a tie goes to the official name
    first = count_captions(["a vixen", "a tod"], classes_from_mapping({"fox": ["vixen", "tod"]})).metrics()["0"]
    assert first["most_common_name"] == "vixen"  # then to the first listed


def test_the_provenance_says_what_was_read_and_which_names_cannot_match():
    classes = classes_from_mapping({"fox": ["&"], "owl": []})
    result = count_captions(CAPTIONS, classes, prefix="photo")
    prov = result.provenance()
    assert prov["kind"] == "caption-count" and prov["prefix"] == "photo"
    assert prov["tokenizer"] == "sqlite fts5 unicode61 remove_diacritics 1"
    assert (prov["captions_read"], prov["captions_kept"], prov["classes"], prov["names"]) == (7, 7, 2, 3)
    assert (prov["shards_counted"], prov["shards_from_cache"], prov["corpus"]) == (0, 0, None)
    assert prov["classes_without_matches"] == ["fox", "owl"]
    assert prov["names_without_tokens"] == [{"class": "0", "name": "&"}]
    assert prov["seconds"] >= 0 and prov["zsclip_version"]
    assert result.metrics()["0"]["alternates"]["fox"] == 0  # "fox" captions lack the prefix word "photo"


def test_prefix_words_must_all_occur_and_must_have_letters():
    classes = classes_from_mapping({"fox": [], "vixen": []})
    counts = count_captions(CAPTIONS, classes, prefix="a photo").metrics()
    assert counts["1"]["actual_freq"] == 1 and counts["0"]["actual_freq"] == 0
    with pytest.raises(ZsclipError, match="prefix word '&&' has no letters or digits to match"):
        CountPlan.build(classes, prefix="photo &&")
    with pytest.raises(ZsclipError, match="no classes to count"):
        CountPlan.build([])


def test_counts_do_not_depend_on_the_batch_size():
    classes = classes_from_mapping({"fox": ["red fox"], "wolf": []})
    whole = count_captions(CAPTIONS, classes)
    for rows in (1, 2, 3):
        small = count_captions(CAPTIONS, classes, batch_rows=rows)
        assert small.metrics() == whole.metrics() and small.rows == whole.rows == 7


def test_the_names_hash_changes_with_what_decides_the_counts():
    base = CountPlan.build(classes_from_mapping({"fox": ["vixen"]}))
    assert base.names_hash() == CountPlan.build(classes_from_mapping({"fox": ["Vixen"]})).names_hash()
    others = [CountPlan.build(classes_from_mapping({"fox": ["tod"]})),
              CountPlan.build(classes_from_mapping({"fox": ["vixen"]}), prefix="photo"),
              CountPlan.build(classes_from_mapping({"fox": [], "vixen": []}))]
    assert len({base.names_hash(), *(p.names_hash() for p in others)}) == 4


def test_no_captions_or_no_countable_name_count_nothing():
    classes = classes_from_mapping({"fox": ["vixen"]})
    empty = count_captions([], classes)
    assert empty.metrics()["0"]["alternates"] == {"fox": 0, "vixen": 0} and empty.rows == 0
    nothing = count_captions(CAPTIONS, classes_from_mapping({"&": ["!!"]}))
    assert nothing.metrics()["0"]["actual_freq"] == 0 and nothing.unmatched_classes() == ["&"]


def _corpus(folder, shards):
    """A clip-retrieval corpus folder: one metadata parquet and one image-embedding file per shard."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "metadata").mkdir(parents=True)
    (folder / "img_emb").mkdir()
    for k, texts in enumerate(shards):
        pq.write_table(pa.table({"image_path": [f"{k}-{i}.jpg" for i in range(len(texts))], "caption": texts}),
                       folder / "metadata" / f"metadata_{k}.parquet")
        emb = np.ones((len(texts), 4), dtype=np.float16) / 2
        np.save(folder / "img_emb" / f"img_emb_{k}.npy", emb)
    return folder


def test_a_repeated_corpus_count_reads_its_shards_from_the_cache_and_says_so(tmp_path, caplog):
    from zsclip.corpus import Corpus
    from zsclip.corpus_count import count_corpus

    corpus = Corpus.open(_corpus(tmp_path / "corpus", [CAPTIONS[:4], CAPTIONS[4:]]))
    classes = classes_from_mapping({"fox": ["vixen"], "wolf": []})
    first = count_corpus(corpus, classes, workers=1, cache_dir=tmp_path / "cache")
    with caplog.at_level("INFO", logger="zsclip.corpus_count"):
        again = count_corpus(corpus, classes, workers=1, cache_dir=tmp_path / "cache")
    assert (again.shards_cached, again.shards_counted) == (2, 0) and again.metrics() == first.metrics()
    assert f"2 of 2 shards counted before (cache {tmp_path / 'cache'})" in caplog.text
    assert first.metrics() == count_captions(CAPTIONS, classes).metrics()


def test_matched_rows_with_prefix_words_are_the_captions_with_every_prefix_word_and_the_name(tmp_path):
    import numpy as np

    from zsclip.corpus import Corpus
    from zsclip.corpus_count import match_rows

    captions = ["a photo of a fox", "a fox", "photo: wolf", "wolf at night", "a photo of a red fox", "photo"]
    corpus = Corpus.open(_corpus(tmp_path / "corpus", [captions[:3], captions[3:]]))
    classes = classes_from_mapping({"fox": ["red fox"], "wolf": [], "owl": ["&"]})
    found = match_rows(corpus, classes, prefix="photo")
    assert {n: rows.tolist() for n, rows in found[0].items()} == {"fox": [0, 4], "red fox": [4]}
    assert found[1]["wolf"].tolist() == [2]
    # rows of every name, one that cannot match included, index the corpus's captions and embeddings
    for per_class in found:
        for rows in per_class.values():
            assert rows.dtype.kind == "i"
            np.asarray(captions)[rows]
    assert found[2]["owl"].size == 0 and found[2]["&"].size == 0


def test_counting_with_several_workers_gives_the_counts_of_one(tmp_path, monkeypatch):
    """The worker path (shards handed out by index, each worker counting with the job's plan), run in-process
    on threads so that what each worker counts is visible here; the real process pool is tested in
    ``test_corpus.py`` (the CLI's ``--workers 2``)."""
    from concurrent.futures import ThreadPoolExecutor

    from zsclip import corpus_count
    from zsclip.corpus import Corpus

    class InProcessPool(ThreadPoolExecutor):
        def __init__(self, max_workers, mp_context=None, initializer=None, initargs=()):
            super().__init__(max_workers, initializer=initializer, initargs=initargs)

    monkeypatch.setattr(corpus_count, "ProcessPoolExecutor", InProcessPool)
    monkeypatch.setattr(corpus_count, "_WORKER_JOB", None)  # restored after the test
    monkeypatch.setattr(corpus_count, "_PROGRESS_QUEUE", None)
    corpus = Corpus.open(_corpus(tmp_path / "corpus", [CAPTIONS[:3], CAPTIONS[3:5], CAPTIONS[5:]]))
    classes = classes_from_mapping({"fox": ["vixen", "red fox"], "wolf": []})
    several = corpus_count.count_corpus(corpus, classes, prefix=None, workers=3, use_cache=False)
    assert (several.shards_counted, several.rows) == (3, 7)
    assert several.metrics() == count_captions(CAPTIONS, classes).metrics()
