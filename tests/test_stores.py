"""Image stores (build, reuse, refuse, resume, search) and the text-embedding cache."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import crash_at_shard, make_cub_folder

import zsclip.stores as stores_mod
from zsclip.datasets import get_dataset
from zsclip.errors import StoreMismatchError, ZsclipError
from zsclip.models import load_model
from zsclip.stores import ImageStore, TextEmbeddingCache


@pytest.fixture()
def cub(tmp_path):
    return get_dataset("cub", make_cub_folder(tmp_path / "cub", n_classes=5, images_per_class=8))


def test_build_writes_a_complete_store_and_reuses_it(cub, tiny_encoder, tmp_path):
    store = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store")
    n_test = len(cub.samples("test"))
    assert len(store) == n_test - 1  # one corrupt image skipped and counted
    assert store.build_stats.images_encoded == n_test - 1
    assert store.build_stats.images_skipped == 1
    corrupt = [s.path for s in cub.samples("test") if open(s.path, "rb").read(4) == b"\x00not"]
    assert [s["path"] for s in store.build_stats.skipped] == corrupt
    assert "UnidentifiedImageError" in store.build_stats.skipped[0]["error"]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == tiny_encoder.fingerprint
    assert manifest["dataset"]["name"] == "cub" and manifest["split"] == "test"
    assert manifest["count"] == len(store) and manifest["dim"] == 32 and manifest["dtype"] == "float16"
    assert isinstance(store.embeddings, np.memmap)
    np.testing.assert_allclose(np.linalg.norm(store.embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert set(store.labels.tolist()) == set(range(5))
    assert not (tmp_path / "store" / "build").exists()

    again = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store")
    assert again.build_stats.images_encoded == 0
    np.testing.assert_array_equal(again.embeddings, store.embeddings)

    scores, rows = store.search(np.asarray(store.embeddings[3], dtype=np.float32), k=2)
    assert rows[0, 0] == 3 and scores[0, 0] == pytest.approx(1.0, abs=2e-3)


def test_store_made_by_another_model_is_refused(cub, tiny_encoder, tiny_model, tmp_path):
    ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store")
    other = load_model(f"local-dir:{tiny_model['local_dir']}", device="cpu")  # other preprocessing
    with pytest.raises(StoreMismatchError, match="not by the model in use"):
        ImageStore.build(cub, "test", other, tmp_path / "store")
    with pytest.raises(StoreMismatchError):
        ImageStore.open(tmp_path / "store", other.fingerprint)
    assert len(ImageStore.open(tmp_path / "store")) > 0  # opening without a model check still works


def test_store_of_another_sample_list_is_refused(tmp_path, tiny_encoder):
    a = get_dataset("cub", make_cub_folder(tmp_path / "a", n_classes=3, images_per_class=4))
    b = get_dataset("cub", make_cub_folder(tmp_path / "b", n_classes=4, images_per_class=4))
    ImageStore.build(a, "test", tiny_encoder, tmp_path / "store")
    with pytest.raises(StoreMismatchError, match="another sample list"):
        ImageStore.build(b, "test", tiny_encoder, tmp_path / "store")


def test_interrupted_build_resumes_from_last_shard(cub, tiny_encoder, tmp_path, monkeypatch):
    reference = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "reference", shard_size=4)
    with crash_at_shard(2), pytest.raises(KeyboardInterrupt):
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store", shard_size=4)
    assert not (tmp_path / "store" / "manifest.json").exists()
    with pytest.raises(ZsclipError, match="unfinished build"):
        ImageStore.open(tmp_path / "store")
    resumed = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store", shard_size=4)
    first_shard = 4  # the first shard's images were not encoded again
    assert resumed.build_stats.images_encoded == len(reference) + reference.build_stats.images_skipped - first_shard
    np.testing.assert_array_equal(resumed.embeddings, reference.embeddings)
    assert resumed.paths == reference.paths


def test_resume_with_other_settings_is_refused(cub, tiny_encoder, tmp_path):
    (tmp_path / "store" / "build").mkdir(parents=True)
    (tmp_path / "store" / "build" / "identity.json").write_text(json.dumps({"model_fingerprint": "other"}))
    with pytest.raises(StoreMismatchError, match="cannot be resumed"):
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store")


def test_ivf_index_factory_and_bad_factory_string(cub, tiny_encoder, tmp_path):
    import faiss

    store = ImageStore.build(cub, "train", tiny_encoder, tmp_path / "ivf", dtype="float32", index="IVF2,Flat")
    assert store.manifest["index"] == "IVF2,Flat" and store.embeddings.dtype == np.float32
    ivf = faiss.extract_index_ivf(store.index)  # raises unless the store's index is an IVF index
    assert ivf.nlist == 2 and ivf.ntotal == len(store)
    ivf.nprobe = 2  # every list: the search is exact, so it must agree with a brute-force inner product
    vectors = np.asarray(store.embeddings, dtype=np.float32)
    scores, rows = store.search(vectors, k=3)
    exact = vectors @ vectors.T
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(store)))  # each image finds itself first
    np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :3], atol=1e-5)
    with pytest.raises(ZsclipError, match="index-factory"):
        ImageStore.build(cub, "train", tiny_encoder, tmp_path / "bad", index="NotAnIndex")


def test_text_cache_encodes_each_text_once(tiny_encoder, tmp_path):
    cache = TextEmbeddingCache(tiny_encoder, tmp_path / "texts.sqlite")
    first = cache.encode(["a", "b", "a", "c"])
    assert cache.texts_encoded == 3 and first.shape == (4, 32)
    np.testing.assert_array_equal(first[0], first[2])
    again = TextEmbeddingCache(tiny_encoder, tmp_path / "texts.sqlite")
    second = again.encode(["c", "a", "d"])
    assert again.texts_encoded == 1  # only "d" is new
    np.testing.assert_allclose(second[:2], first[[3, 0]])
    np.testing.assert_allclose(second, tiny_encoder.encode_texts(["c", "a", "d"]), atol=1e-6)


def test_text_cache_keeps_finished_batches_after_a_crash(tiny_encoder, tmp_path, monkeypatch):
    cache = TextEmbeddingCache(tiny_encoder, tmp_path / "texts.sqlite")
    real = tiny_encoder.encode_texts
    calls = {"n": 0}

    def crash_second_batch(texts, batch_size=256):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(texts, batch_size)

    monkeypatch.setattr(tiny_encoder, "encode_texts", crash_second_batch)
    with pytest.raises(RuntimeError):
        cache.encode([f"text {i}" for i in range(6)], batch_size=3)
    monkeypatch.undo()
    assert len(TextEmbeddingCache(tiny_encoder, tmp_path / "texts.sqlite")) == 3


def _write_texts(db: str, texts: list[str], me: str, folder: str, barrier) -> None:
    """Child process: encode ``texts`` into the shared cache; the first batch waits until the other process is
    encoding too, so both read the cache before either writes. Writes how many texts it encoded."""
    from fixtures_data import HashTextEncoder

    cache = TextEmbeddingCache(HashTextEncoder((folder, me, ("a", "b"))), db)
    barrier.wait()
    cache.encode(texts, batch_size=7)
    (Path(folder) / f"{me}.encoded").write_text(str(cache.texts_encoded))


def test_text_cache_two_processes_write_at_once(tmp_path):
    """Two processes fill one new cache with 40 shared and 20 own texts each, both encoding at the same moment
    (each has read the cache before either writes), so every shared text is written by both: no error, no row
    lost or damaged."""
    from fixtures_data import HashTextEncoder

    db = str(tmp_path / "shared.sqlite")
    texts = {n: [f"shared {i}" for i in range(40)] + [f"only {n} {i}" for i in range(20)] for n in ("a", "b")}
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2, timeout=240)
    children = [ctx.Process(target=_write_texts, args=(db, texts[n], n, str(tmp_path), barrier)) for n in texts]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [child.exitcode for child in children] == [0, 0]
    assert [int((tmp_path / f"{n}.encoded").read_text()) for n in texts] == [60, 60]  # both wrote the shared 40
    encoder = HashTextEncoder()
    cache = TextEmbeddingCache(encoder, db)
    assert len(cache) == 80
    every = sorted(set(texts["a"] + texts["b"]))
    found = cache.lookup(every)  # each row is checked against its digest on the way out
    np.testing.assert_array_equal(np.stack([found[t] for t in every]), np.stack([encoder.vector(t) for t in every]))
    assert cache.encode(every).shape == (80, 32) and cache.texts_encoded == 0


def _direct(encoder, dataset, sample):
    """The embedding of one sample encoded on its own, outside any store."""
    return encoder.encode_images(encoder.preprocess(dataset.load_image(sample))[None])[0]


def test_a_multi_shard_store_matches_a_direct_encode_row_by_row(cub, tiny_encoder, tmp_path):
    """Shards of 3 and batches of 2 (neither divides the other; the unreadable image opens shard 2): every stored
    row holds the embedding, label and path of the sample it names, as if that image were encoded alone."""
    samples = cub.samples("test")
    store = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store", shard_size=3, batch_size=2,
                             dtype="float32")
    skipped = [i for i, s in enumerate(samples) if open(s.path, "rb").read(4) == b"\x00not"]
    assert skipped == [3] and len(samples) > 3 * 3  # the unreadable image is in shard 1; four shards or more
    assert store.sample_indices.tolist() == [i for i in range(len(samples)) if i not in skipped]
    for row, i in enumerate(store.sample_indices):
        assert store.paths[row] == samples[i].path and store.labels[row] == samples[i].label
        np.testing.assert_allclose(store.embeddings[row], _direct(tiny_encoder, cub, samples[i]), atol=1e-5)


def test_a_crash_while_writing_a_shard_leaves_no_shard_under_its_name(cub, tiny_encoder, tmp_path, monkeypatch):
    """Shards are written atomically: a crash half-way through writing shard 1 leaves shard 0 only (and, after a
    hard kill, a temporary file that the resume removes); the resumed store matches a direct encode."""
    import io

    real_savez = np.savez
    calls = {"n": 0}

    def crash_half_way(fh, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:
            buf = io.BytesIO()
            real_savez(buf, **arrays)
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            raise KeyboardInterrupt("simulated crash while writing")
        return real_savez(fh, **arrays)

    monkeypatch.setattr(stores_mod.np, "savez", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store", shard_size=4)
    monkeypatch.setattr(stores_mod.np, "savez", real_savez)
    build_dir = tmp_path / "store" / "build"
    assert sorted(p.name for p in build_dir.glob("shard_*")) == ["shard_00000.npz"]
    (build_dir / ".shard_00001.npz.x1y2z3.npz.tmp").write_bytes(b"PK\x03\x04 half a shard")  # what a kill leaves
    store = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store", shard_size=4)
    samples = cub.samples("test")
    assert store.build_stats.images_encoded == len(samples) - 4  # shard 0 (with the unreadable image) was reused
    assert not build_dir.exists()
    for row, i in enumerate(store.sample_indices):
        np.testing.assert_allclose(np.asarray(store.embeddings[row], dtype=np.float32),
                                   _direct(tiny_encoder, cub, samples[i]), atol=3e-3)
