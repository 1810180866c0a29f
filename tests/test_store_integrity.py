"""Image stores and the text cache never serve data they cannot vouch for, and never delete what they did not write.

Damaged files are detected on open (checksums, shapes, counts) with an error that names the file and the
rebuild command; replaced, restored and newly readable images are re-encoded; foreign folders are refused;
bad options and leftovers of crashed builds are handled before they can do harm.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import class_image, crash_at_shard, make_cub_folder
from typer.testing import CliRunner

import zsclip.stores as stores_mod
from zsclip.cli import app
from zsclip.datasets import get_dataset
from zsclip.errors import CorruptCacheError, StorageError, StoreMismatchError, ZsclipError
from zsclip.stores import ImageStore, TextEmbeddingCache

runner = CliRunner()


@pytest.fixture()
def cub(tmp_path):
    return get_dataset("cub", make_cub_folder(tmp_path / "cub", n_classes=4, images_per_class=4))


@pytest.fixture()
def built(cub, tiny_encoder, tmp_path):
    """A finished store of the CUB fixture's test split (one of its images is unreadable)."""
    return ImageStore.build(cub, "test", tiny_encoder, tmp_path / "store")


def _cli_args(tiny_model, root):
    return ["-d", "cub", "--dataset-root", str(root), "--model", tiny_model["name"], "--pretrained",
            str(tiny_model["checkpoint"]), "--device", "cpu"]


# -- damaged stores are never used ---------------------------------------------------------------------

def _random_bytes(store):
    f = store.path / "embeddings.npy"
    f.write_bytes(os.urandom(f.stat().st_size))


def _nan_rows(store):
    emb = np.load(store.path / "embeddings.npy")
    emb[2] = np.nan
    np.save(store.path / "embeddings.npy", emb)


def _wrong_shape(store):
    np.save(store.path / "embeddings.npy", np.load(store.path / "embeddings.npy")[:-1])


def _edited_count(store):
    m = json.loads((store.path / "manifest.json").read_text())
    m["count"] -= 3
    (store.path / "manifest.json").write_text(json.dumps(m))


def _bad_manifest(store):
    (store.path / "manifest.json").write_text('{"format": 2, "count": ')


def _no_metadata(store):
    (store.path / "metadata.parquet").unlink()


def _bad_metadata(store):
    (store.path / "metadata.parquet").write_bytes(b"PAR1 not really")


@pytest.mark.parametrize("damage, file", [
    (_random_bytes, "embeddings.npy"), (_nan_rows, "embeddings.npy"), (_wrong_shape, "embeddings.npy"),
    (_edited_count, "embeddings.npy"), (_bad_manifest, "manifest.json"), (_no_metadata, "metadata.parquet"),
    (_bad_metadata, "metadata.parquet"),
])
def test_a_damaged_store_is_refused_naming_the_file_and_the_rebuild(built, cub, tiny_encoder, damage, file):
    damage(built)
    with pytest.raises(CorruptCacheError) as caught:
        ImageStore.open(built.path)
    message = str(caught.value)
    assert file in message and "--rebuild" in message and str(built.path) in message
    with pytest.raises(CorruptCacheError):  # building (as classify does) does not trust it either
        ImageStore.build(cub, "test", tiny_encoder, built.path)
    fresh = ImageStore.build(cub, "test", tiny_encoder, built.path, rebuild=True)
    assert len(fresh) == len(cub.samples("test")) - 1
    assert np.isfinite(np.asarray(fresh.embeddings, dtype=np.float32)).all()


def test_damaged_store_via_the_cli_is_one_clear_line(tmp_path, tiny_model):
    root = make_cub_folder(tmp_path / "data", n_classes=3, images_per_class=4)
    store = tmp_path / "store"
    args = ["classify", *_cli_args(tiny_model, root), "--store", str(store)]
    assert runner.invoke(app, args).exit_code == 0
    (store / "manifest.json").write_text("not json")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "manifest.json" in res.output and "--rebuild" in " ".join(res.output.split())
    info = runner.invoke(app, ["store", "info", str(store)])
    assert info.exit_code == 2 and "manifest.json" in info.output
    again = runner.invoke(app, [*args, "--rebuild"])
    assert again.exit_code == 0, again.output
    assert "encoded this run: images test 5 (5 in all)" in again.output


def test_a_damaged_index_is_refused_on_first_search(built):
    (built.path / "index.faiss").write_bytes(b"garbage")
    store = ImageStore.open(built.path)
    with pytest.raises(CorruptCacheError, match="index.faiss"):
        store.search(np.asarray(store.embeddings[0], dtype=np.float32))


def test_text_cache_with_replaced_vectors_is_refused(tiny_encoder, tmp_path):
    db = tmp_path / "texts.sqlite"
    TextEmbeddingCache(tiny_encoder, db).encode(["a red bird", "a blue bird"])
    con = sqlite3.connect(db)
    other = np.random.default_rng(0).normal(size=32).astype(np.float32)
    con.execute("UPDATE emb SET vec = ? WHERE text = 'a red bird'", ((other / np.linalg.norm(other)).tobytes(),))
    con.commit()
    con.close()
    with pytest.raises(CorruptCacheError, match="a red bird") as caught:
        TextEmbeddingCache(tiny_encoder, db).encode(["a red bird"])
    assert str(db) in str(caught.value) and "Delete" in str(caught.value)


def test_corrupt_text_cache_file_is_a_clear_error(tiny_encoder, tmp_path):
    db = tmp_path / "texts.sqlite"
    db.write_bytes(os.urandom(4096))
    with pytest.raises(CorruptCacheError, match="texts.sqlite"):
        TextEmbeddingCache(tiny_encoder, db).encode(["x"])


def test_text_cache_rows_of_older_versions_are_encoded_again(tiny_encoder, tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE emb (text TEXT PRIMARY KEY, vec BLOB NOT NULL)")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (tiny_encoder.fingerprint,))
    con.execute("INSERT INTO emb VALUES ('x', ?)", (np.ones(32, dtype=np.float32).tobytes(),))  # unverifiable
    con.commit()
    con.close()
    cache = TextEmbeddingCache(tiny_encoder, db)
    np.testing.assert_allclose(cache.encode(["x"])[0], tiny_encoder.encode_texts(["x"])[0], atol=1e-6)
    assert cache.texts_encoded == 1
    assert TextEmbeddingCache(tiny_encoder, db).encode(["x"]).shape == (1, 32)


# -- stale stores ----------------------------------------------------------------------------------------

def _bump(path: Path, image) -> None:
    image.save(path, format="JPEG")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a later time, whatever the clock


def test_replaced_restored_and_newly_readable_images_are_encoded_again(built, cub, tiny_encoder):
    samples = cub.samples("test")
    skipped = built.build_stats.skipped[0]["path"]
    replaced = built.paths[0]
    before = np.asarray(built.embeddings, dtype=np.float32).copy()
    _bump(Path(replaced), class_image(3).resize((48, 48)))  # another class's picture
    _bump(Path(skipped), class_image(0))  # the unreadable image is readable now
    store = ImageStore.build(cub, "test", tiny_encoder, built.path)
    assert store.build_stats.images_encoded == 2 and store.build_stats.images_skipped == 0
    assert len(store) == len(samples)
    row = store.paths.index(replaced)
    assert not np.allclose(np.asarray(store.embeddings[row], dtype=np.float32), before[0], atol=1e-3)
    expected = tiny_encoder.encode_images(tiny_encoder.preprocess(cub.load_image(samples[row]))[None])[0]
    np.testing.assert_allclose(np.asarray(store.embeddings[row], dtype=np.float32), expected, atol=3e-3)
    others = [store.paths.index(p) for p in built.paths[1:]]
    np.testing.assert_array_equal(np.asarray(store.embeddings)[others], before[1:].astype(np.float16))
    assert ImageStore.build(cub, "test", tiny_encoder, built.path).build_stats.images_encoded == 0

    Path(replaced).unlink()  # a deleted image becomes a skipped one; putting it back encodes it again
    gone = ImageStore.build(cub, "test", tiny_encoder, built.path)
    assert len(gone) == len(samples) - 1 and gone.build_stats.skipped[0]["path"] == replaced
    _bump(Path(replaced), class_image(0))
    assert len(ImageStore.build(cub, "test", tiny_encoder, built.path)) == len(samples)


def test_rebuild_encodes_everything_again(built, cub, tiny_encoder):
    again = ImageStore.build(cub, "test", tiny_encoder, built.path, rebuild=True)
    assert again.build_stats.images_encoded == len(built)
    np.testing.assert_array_equal(again.embeddings, built.embeddings)


def test_rendered_datasets_have_no_file_to_check(monkeypatch):
    ds = get_dataset("toyworld")
    monkeypatch.setattr(os, "stat", lambda *a, **k: pytest.fail("a rendered image has no file to stat"))
    assert ds.image_signature(ds.samples("test")[0]) == (-1, -1)


def test_another_dtype_is_refused_not_silently_ignored(built, cub, tiny_encoder):
    with pytest.raises(StoreMismatchError, match="holds float16 embeddings, not float32.*--rebuild"):
        ImageStore.build(cub, "test", tiny_encoder, built.path, dtype="float32")
    assert ImageStore.build(cub, "test", tiny_encoder, built.path).manifest["dtype"] == "float16"
    f32 = ImageStore.build(cub, "test", tiny_encoder, built.path, dtype="float32", rebuild=True)
    assert f32.embeddings.dtype == np.float32 and ImageStore.open(built.path).manifest["dtype"] == "float32"


def test_another_index_is_rebuilt_from_the_stored_embeddings(cub, tiny_encoder, tmp_path):
    flat = ImageStore.build(cub, "train", tiny_encoder, tmp_path / "s")
    ivf = ImageStore.build(cub, "train", tiny_encoder, tmp_path / "s", index="IVF2,Flat")
    assert ivf.manifest["index"] == "IVF2,Flat" and ivf.build_stats.images_encoded == 0
    np.testing.assert_array_equal(ivf.embeddings, flat.embeddings)
    assert ivf.search(np.asarray(ivf.embeddings[1], dtype=np.float32), k=1)[1][0, 0] == 1


def test_an_index_too_big_for_the_store_is_a_clear_error(cub, tiny_encoder, tmp_path):
    with pytest.raises(ZsclipError, match="IVF64,Flat.*cannot be built on this store's 7 vectors.*Flat") as err:
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s", index="IVF64,Flat")
    assert "nx >= " in str(err.value)  # FAISS's own reason (its last line) is passed on
    assert not (tmp_path / "s" / "manifest.json").exists()
    assert ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s").build_stats.images_encoded == 0  # reused


# -- folders zsclip did not make ------------------------------------------------------------------------

def test_a_foreign_folder_is_refused_and_left_untouched(cub, tiny_encoder, tmp_path):
    mine = tmp_path / "photos"
    (mine / "build").mkdir(parents=True)
    (mine / "build" / "notes.txt").write_text("keep me")
    (mine / "index.faiss").write_text("mine too")
    with pytest.raises(ZsclipError, match="not a zsclip image store"):
        ImageStore.build(cub, "test", tiny_encoder, mine)
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == ["build", "build/notes.txt",
                                                                                "index.faiss"]
    assert (mine / "index.faiss").read_text() == "mine too"


def test_only_own_files_are_deleted_from_the_build_folder(cub, tiny_encoder, tmp_path, monkeypatch, caplog):
    with crash_at_shard(2), pytest.raises(KeyboardInterrupt):
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s", shard_size=4)
    (tmp_path / "s" / "build" / "my-notes.txt").write_text("not zsclip's")
    with caplog.at_level("WARNING", logger="zsclip.stores"):
        store = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s", shard_size=4)
    assert len(store) == 7
    assert [p.name for p in (tmp_path / "s" / "build").iterdir()] == ["my-notes.txt"]
    assert f"left {tmp_path / 's' / 'build'} in place: it holds files zsclip did not write" in caplog.text


def test_an_empty_folder_is_fine(cub, tiny_encoder, tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(ImageStore.build(cub, "test", tiny_encoder, tmp_path / "empty")) == 7


# -- bad options and leftovers of crashed builds ---------------------------------------------------------

@pytest.mark.parametrize("batch_size", [-1, 0])
def test_bad_batch_size_is_refused_before_anything_is_written(cub, tiny_encoder, tmp_path, batch_size):
    with pytest.raises(ZsclipError, match="--batch-size"):
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s", batch_size=batch_size)
    assert not (tmp_path / "s").exists()


def test_bad_batch_size_on_the_cli(tmp_path, tiny_model):
    root = make_cub_folder(tmp_path / "data", n_classes=2, images_per_class=2)
    res = runner.invoke(app, ["embed", *_cli_args(tiny_model, root), "--batch-size", "-1",
                              "--store", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--batch-size" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "s").exists()


def _write_bad_shards(build_dir: Path) -> None:
    np.savez(build_dir / "shard_00000.npz", embeddings=np.zeros((0, 32), np.float16),
             ok=np.zeros(0, np.int64), bad=np.zeros(0, np.int64), errors=np.zeros(0, str),
             signatures=np.zeros((0, 2), np.int64))  # what a --batch-size -1 run used to leave
    (build_dir / "shard_00001.npz").write_bytes(b"")  # a zero-length file from a crash
    (build_dir / "shard_00002.npz").write_bytes(b"PK\x03\x04 truncated")


def test_damaged_shards_left_by_a_crash_are_encoded_again(cub, tiny_encoder, tmp_path):
    reference = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "ref", shard_size=4)
    build_dir = tmp_path / "s" / "build"
    build_dir.mkdir(parents=True)
    (build_dir / "identity.json").write_text(json.dumps({
        "model_fingerprint": tiny_encoder.fingerprint, "dataset": "cub", "split": "test",
        "samples_fingerprint": cub.split_fingerprint("test"), "num_samples": 8, "dtype": "float16",
        "shard_size": 4}))
    _write_bad_shards(build_dir)
    store = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s", shard_size=4)
    assert store.build_stats.images_encoded == len(reference)
    np.testing.assert_array_equal(store.embeddings, reference.embeddings)


def test_resume_with_another_shard_size_starts_over(cub, tiny_encoder, tmp_path, monkeypatch):
    reference = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "ref")
    with crash_at_shard(3), pytest.raises(KeyboardInterrupt):
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s", shard_size=3)
    store = ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s", shard_size=4)
    assert store.paths == reference.paths and store.build_stats.images_encoded == len(reference)
    np.testing.assert_allclose(store.embeddings, reference.embeddings, atol=2e-3)  # other batches: rounding only


def test_disk_full_is_a_clear_error(cub, tiny_encoder, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stores_mod.np, "save", full)
    with pytest.raises(StorageError, match="embeddings.npy.*disk is full"):
        ImageStore.build(cub, "test", tiny_encoder, tmp_path / "s")
    assert not (tmp_path / "s" / "manifest.json").exists()
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")]


def test_disk_full_on_the_cli(tmp_path, tiny_model, monkeypatch):
    root = make_cub_folder(tmp_path / "data", n_classes=2, images_per_class=2)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stores_mod.np, "savez", full)
    res = runner.invoke(app, ["embed", *_cli_args(tiny_model, root), "--store", str(tmp_path / "s")])
    assert res.exit_code == 2 and "disk is full" in res.output and "Traceback" not in res.output


# -- a read-only cache ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _read_only(path: Path):
    """Make ``path`` read-only for this process: chmod, or as root (which chmod does not stop) a ro bind mount."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if shutil.which("mount") is None or subprocess.run(["mount", "--bind", str(path), str(path)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("running as root without bind mounts: cannot make a folder read-only")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only")
        yield
    finally:
        gc.collect()  # memory maps of the store's files
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_warm_read_only_cache_still_serves_and_a_cold_one_says_so(tmp_path, tiny_model, isolated_cache):
    root = make_cub_folder(tmp_path / "data", n_classes=3, images_per_class=4)
    args = ["classify", *_cli_args(tiny_model, root), "-m", "descriptions", "-p", "descriptors=attributes",
            "-o", str(tmp_path / "first.json")]
    assert runner.invoke(app, args).exit_code == 0
    with _read_only(isolated_cache):
        warm = runner.invoke(app, [*args[:-1], str(tmp_path / "second.json")])
        assert warm.exit_code == 0, warm.output
        assert "encoded this run: images test 0 (0 in all), 0 texts" in warm.output
        cold = runner.invoke(app, ["classify", *_cli_args(tiny_model, root), "--split", "train"])
        assert cold.exit_code == 2 and "Traceback" not in cold.output
        assert "not writable" in cold.output and "ZSCLIP_HOME" in " ".join(cold.output.split())
    first, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("first", "second"))
    assert first["metrics"] == second["metrics"]


def test_a_read_only_store_is_served_only_as_it_is(built, cub, tiny_encoder):
    """In a folder zsclip cannot write, an up-to-date store is served; a rebuild, another index or a changed
    image cannot be done there, and the error says which and what to do."""
    path = built.path
    with _read_only(path):
        assert len(ImageStore.build(cub, "test", tiny_encoder, path)) == len(built)
        with pytest.raises(StorageError, match="has index 'Flat', not 'IVF2,Flat'.*ZSCLIP_HOME"):
            ImageStore.build(cub, "test", tiny_encoder, path, index="IVF2,Flat")
        with pytest.raises(StorageError, match="not writable"):
            ImageStore.build(cub, "test", tiny_encoder, path, rebuild=True)
    sample = cub.samples("test")[0]
    os.utime(sample.path, ns=(1, 1))
    with _read_only(path):
        with pytest.raises(StorageError, match=r"out of date \(1 image file\(s\) changed"):
            ImageStore.build(cub, "test", tiny_encoder, path)


def test_search_checks_the_query_dimension_and_caps_k_at_the_store_size(built):
    with pytest.raises(ZsclipError, match=f"query vectors have dimension 5, the store {built.dim}"):
        built.search(np.zeros(5, dtype=np.float32))
    q = np.asarray(built.embeddings[:2], dtype=np.float32)
    scores, rows = built.search(q, k=1000)
    assert rows.shape == (2, len(built)) and sorted(rows[0].tolist()) == list(range(len(built)))
    np.testing.assert_allclose(scores[:, 0], (q * q).sum(axis=1), rtol=1e-3)  # each finds itself (or a twin)
