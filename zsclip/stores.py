"""Cached embedding stores: image stores on disk and the content-addressed text-embedding cache.

An image store holds the normalised image embeddings of one dataset split made by one model:

    STORE/manifest.json      model fingerprint, dataset, split, counts, dim, dtype, index, skipped images,
                             and the SHA-256 of each data file (written last: a store without it is unfinished)
    STORE/embeddings.npy     N × D, float16 or float32, memory-mapped when opened
    STORE/metadata.parquet   index, path, label, split, size and mtime_ns of each stored image
    STORE/index.faiss        a FAISS inner-product index (exact ``Flat`` unless another factory string is given)
    STORE/.zsclip-store      marks the folder as zsclip's and is the lock builders hold
    STORE/build/             only while building: ``identity.json`` and one shard file per ``shard_size`` samples

Builders of one store coordinate through an exclusive lock on ``.zsclip-store``: a second builder waits,
then finds the finished store and reuses it. A build writes each shard atomically, so an interrupted build
resumes from its last whole shard (shards are checked before they are reused). Opening a store checks the
checksums, shapes and counts against the manifest; a failed check is a ``CorruptCacheError`` that names the
file and says how to rebuild. Each image's file size and modification time are recorded, so images that
were replaced, restored or became readable are re-encoded on the next build. zsclip only writes into a new
or empty folder or one of its own stores, and only ever deletes the files it names here.

The text cache is one SQLite database per model fingerprint (WAL mode): concurrent writers are safe and a
crash loses at most the batch in flight. Each row carries a digest of (text, vector) that is checked on
every read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import (
    DISK_FULL,
    NOT_WRITABLE,
    atomic_path,
    file_lock,
    sqlite_connection,
    storage_error,
    write_json_atomic,
)
from ._version import __version__
from .errors import CorruptCacheError, StorageError, StoreMismatchError, ZsclipError
from .paths import cache_root
from .progress import progress_bar

if TYPE_CHECKING:
    from .datasets import Dataset, Sample
    from .models import Encoder

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
METADATA = "metadata.parquet"
INDEX = "index.faiss"
LOCK = ".zsclip-store"
BUILD = "build"
IDENTITY = "identity.json"
STORE_FORMAT = 2
#: how far a stored embedding's norm may be from 1 (float16 rounding stays far below this)
NORM_TOLERANCE = 0.02
_SHARD = re.compile(r"shard_\d+\.npz")
#: the temporary file of an atomic shard write (``atomic_path`` names it ``.<target>.<random><suffix>.tmp``)
_SHARD_TEMP = re.compile(r"\.shard_\d+\.npz\..+\.tmp")
_MANIFEST_FIELDS = ("format", "model", "dataset", "split", "count", "dim", "dtype", "index", "skipped", "files")
_REBUILD = "run `zsclip embed` or `zsclip classify` again with --rebuild, or delete the folder"


@dataclass
class BuildStats:
    """What one ``ImageStore.build`` call did: counts for the run record."""

    images_encoded: int = 0
    images_skipped: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def default_store_path(dataset: Dataset, split: str, fingerprint: str) -> Path:
    """Where the store of (dataset, split, model) lives under the cache root."""
    name = f"{dataset.name}-{split}-{dataset.split_fingerprint(split)[:10]}-{fingerprint[:12]}"
    return cache_root() / "stores" / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _damaged(path: Path, name: str, problem: str) -> CorruptCacheError:
    """The error for a store file that fails a check: which file, what is wrong, how to rebuild."""
    return CorruptCacheError(f"image store {path}: {name} {problem}. The store is damaged and is not used; "
                             f"rebuild it: {_REBUILD} {path}")


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path`` (``ZsclipError`` when absent, ``CorruptCacheError`` when damaged)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = " (an unfinished build is there: run `zsclip embed` again to resume it)" if (
            path / BUILD).is_dir() else ""
        raise ZsclipError(f"no image store at {path}: {MANIFEST} is missing{hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _damaged(path, MANIFEST, f"is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise _damaged(path, MANIFEST, "is not a JSON object")
    if manifest.get("format") != STORE_FORMAT:
        raise _OtherFormat(f"store {path} has format {manifest.get('format')}; this zsclip reads {STORE_FORMAT}. "
                          f"Rebuild it: {_REBUILD} {path}")
    missing = [k for k in _MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise _damaged(path, MANIFEST, f"lacks the field(s) {', '.join(missing)}")
    return manifest


class _OtherFormat(ZsclipError):
    """A store written by a zsclip version with another store format."""


def _is_zsclip_manifest(path: Path) -> bool:
    """Whether ``path`` is a manifest a zsclip version wrote (any format)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "format" in data and "model" in data and "zsclip_version" in data


def _check_store_folder(path: Path) -> None:
    """Refuse to write into an existing folder that is neither empty nor a zsclip image store."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ZsclipError(f"image store path {path} exists and is not a folder; pass a folder with --store")
    names = {p.name for p in path.iterdir()}
    if not names or LOCK in names or (path / BUILD / IDENTITY).is_file() or _is_zsclip_manifest(path / MANIFEST):
        return
    raise ZsclipError(
        f"{path} is a non-empty folder that is not a zsclip image store (it has no {MANIFEST} or {LOCK}); "
        "zsclip does not write into, or delete from, folders it did not make. Pass a new or empty folder "
        "with --store."
    )


def _remove_build_files(path: Path) -> None:
    """Delete the unfinished-build files zsclip wrote (by name), and ``build/`` if nothing else is in it."""
    build_dir = path / BUILD
    if not build_dir.is_dir():
        return
    for entry in build_dir.iterdir():
        if entry.name == IDENTITY or _SHARD.fullmatch(entry.name) or _is_own_temp(entry.name):
            entry.unlink(missing_ok=True)
    try:
        build_dir.rmdir()
    except OSError:
        log.warning("left %s in place: it holds files zsclip did not write", build_dir)


def _is_own_temp(name: str) -> bool:
    """A temporary file of an interrupted atomic write of one of the store's files."""
    if not name.endswith(".tmp"):
        return False
    if any(name.startswith(f".{own}.") for own in (MANIFEST, EMBEDDINGS, METADATA, INDEX, IDENTITY)):
        return True
    return _SHARD_TEMP.fullmatch(name) is not None


def _remove_store_files(path: Path) -> None:
    """Delete every file of the store zsclip wrote (manifest first, so the store is unpublished at once)."""
    for name in (MANIFEST, EMBEDDINGS, METADATA, INDEX):
        (path / name).unlink(missing_ok=True)
    for entry in path.iterdir():
        if entry.is_file() and _is_own_temp(entry.name):
            entry.unlink(missing_ok=True)
    _remove_build_files(path)


def _make_index(vectors: np.ndarray, spec: str) -> Any:
    """A trained FAISS inner-product index of ``vectors`` built from the factory string ``spec``."""
    import faiss

    try:
        index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ZsclipError(f"--index {spec!r} is not a valid FAISS index-factory string: {exc}") from None
    try:
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise ZsclipError(f"--index {spec!r} cannot be built on this store's {len(vectors)} vectors ({first}); "
                          "use --index Flat, or an index with fewer lists") from None
    return index


def _check_index_spec(spec: str, dim: int) -> None:
    """Refuse a FAISS factory string that names no index, before any image is encoded."""
    import faiss

    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ZsclipError(f"--index {spec!r} is not a valid FAISS index-factory string: {exc}") from None


def _check_options(dtype: str | None, batch_size: int, workers: int, shard_size: int) -> None:
    """Refuse bad build options before anything is read or written."""
    if dtype not in (None, "float16", "float32"):
        raise ZsclipError(f"store dtype (--dtype) must be float16 or float32, got {dtype!r}")
    for name, value in (("batch size (--batch-size)", batch_size), ("decoding threads (--workers)", workers),
                        ("shard size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ZsclipError(f"{name} must be a whole number of at least 1, got {value!r}")


def _check_vectors(emb: np.ndarray, rows: Sequence[int], samples: Sequence[Sample]) -> None:
    """Refuse to store embeddings that are not finite unit vectors (a broken model or weights)."""
    v = np.asarray(emb, dtype=np.float32)
    bad = ~np.isfinite(v).all(axis=1)
    bad |= np.abs(np.linalg.norm(np.nan_to_num(v), axis=1) - 1.0) > NORM_TOLERANCE
    if bad.any():
        first = samples[int(rows[int(np.flatnonzero(bad)[0])])].path
        raise ZsclipError(f"the model produced {int(bad.sum())} embedding(s) that are not finite unit vectors "
                          f"(first: {first}); nothing was stored. The model or its weights are broken")


class ImageStore:
    """Embeddings, metadata and a FAISS index of one dataset split, made by one model.

    Open an existing store with ``ImageStore.open(path)``; build (or resume, refresh, or reuse) one with
    ``ImageStore.build(dataset, split, encoder)``. Constructing one checks its files against the manifest.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.manifest = manifest
        count, dim = int(manifest["count"]), int(manifest["dim"])
        for name in (EMBEDDINGS, METADATA):
            file = self.path / name
            if not file.is_file():
                raise _damaged(self.path, name, "is missing")
            if _sha256(file) != manifest["files"].get(name, {}).get("sha256"):
                raise _damaged(self.path, name, f"does not match the checksum in {MANIFEST} (it was changed or "
                               "damaged after the store was built)")
        try:
            self.embeddings: np.ndarray = np.load(self.path / EMBEDDINGS, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise _damaged(self.path, EMBEDDINGS, f"cannot be read ({exc})") from None
        if self.embeddings.shape != (count, dim) or self.embeddings.dtype != np.dtype(manifest["dtype"]):
            raise _damaged(self.path, EMBEDDINGS, f"holds {self.embeddings.shape} {self.embeddings.dtype}, but "
                           f"{MANIFEST} says ({count}, {dim}) {manifest['dtype']}")
        try:
            table = pq.read_table(self.path / METADATA)
            self.labels: np.ndarray = table.column("label").to_numpy()
            self.paths: list[str] = table.column("path").to_pylist()
            self.sample_indices: np.ndarray = table.column("index").to_numpy()
            self._sizes = table.column("size").to_numpy()
            self._mtimes = table.column("mtime_ns").to_numpy()
        except Exception as exc:  # pyarrow raises several types for a damaged file; all mean the same here
            raise _damaged(self.path, METADATA, f"cannot be read ({type(exc).__name__}: {exc})") from None
        if table.num_rows != count:
            raise _damaged(self.path, METADATA, f"has {table.num_rows} rows, but {MANIFEST} counts {count} images")
        num_samples = manifest["dataset"].get("num_samples")
        if count + len(manifest["skipped"]) != num_samples:
            raise _damaged(self.path, MANIFEST, f"counts {count} images and {len(manifest['skipped'])} skipped, "
                           f"but the split has {num_samples} samples")
        self._index: Any = None
        self.build_stats = BuildStats(images_skipped=len(manifest["skipped"]), skipped=list(manifest["skipped"]))

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, fingerprint: str | None = None) -> ImageStore:
        """Open a finished store; refuse it when ``fingerprint`` (the model's) differs from the store's.

        Waits while another process is building or refreshing the store.
        """
        path = Path(path).expanduser()
        lock = file_lock(path / LOCK, shared=True) if (path / LOCK).is_file() else contextlib.nullcontext()
        with lock:
            return cls._open_unlocked(path, fingerprint)

    @classmethod
    def _open_unlocked(cls, path: Path, fingerprint: str | None) -> ImageStore:
        manifest = _read_manifest(path)
        if fingerprint is not None and manifest["model"].get("fingerprint") != fingerprint:
            raise StoreMismatchError(
                f"image store {path} was made by model {manifest['model'].get('model')} "
                f"(fingerprint {manifest['model'].get('fingerprint')}), not by the model in use (fingerprint "
                f"{fingerprint}); embeddings of different models or preprocessing cannot be mixed. Use another "
                "--store path, or leave --store out to use the cache."
            )
        return cls(path, manifest)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def info(self) -> dict[str, Any]:
        """The manifest plus the store's location (for ``zsclip store info``)."""
        return {"path": str(self.path), **self.manifest}

    # -- search ----------------------------------------------------------------------------------
    @property
    def index(self) -> Any:
        """The FAISS index (read on first use, after checking its checksum)."""
        if self._index is None:
            import faiss

            file = self.path / INDEX
            if not file.is_file() or _sha256(file) != self.manifest["files"].get(INDEX, {}).get("sha256"):
                raise _damaged(self.path, INDEX, f"is missing or does not match the checksum in {MANIFEST}")
            self._index = faiss.read_index(str(file))
        return self._index

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product nearest images of each query vector: (scores, store row indices), both ``Q × k``."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ZsclipError(f"query vectors have dimension {q.shape[1]}, the store {self.dim}")
        return self.index.search(q, min(k, len(self)))

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def build(cls, dataset: Dataset, split: str, encoder: Encoder, path: str | Path | None = None, *,
              dtype: str | None = None, index: str | None = None, batch_size: int = 64, workers: int = 4,
              shard_size: int = 1024, rebuild: bool = False) -> ImageStore:
        """Build the store of ``dataset``/``split`` with ``encoder``, or reuse / refresh / resume one at ``path``.

        A finished store with the same model and sample list is reused: only images whose file changed
        since (size or modification time) are encoded again. ``rebuild`` discards the store and encodes
        everything. ``dtype`` (default float16) and ``index`` (default ``Flat``) apply to a new store; asked
        of an existing one, another dtype is refused (it needs ``rebuild``) and another index is rebuilt
        from the stored embeddings. A store made by another model or of another sample list is refused.
        Another process building the same store is waited for.
        """
        _check_options(dtype, batch_size, workers, shard_size)
        samples = dataset.samples(split)
        if not samples:
            raise ZsclipError(f"split {split!r} of dataset {dataset.name!r} has no samples")
        path = Path(path).expanduser() if path else default_store_path(dataset, split, encoder.fingerprint)
        _check_store_folder(path)
        if index is not None:
            _check_index_spec(index, encoder.embed_dim)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in NOT_WRITABLE:
                raise StorageError(f"cannot build the image store at {path}: the folder is not writable "
                                   f"({exc.strerror}). Point ZSCLIP_HOME at a writable folder, or pass --store DIR"
                                   ) from None
            raise
        job = _Build(cls, dataset, split, encoder, path, samples, dtype, index, batch_size, workers, shard_size)
        with file_lock(path / LOCK, waiting=f"waiting for another zsclip process building {path}") as writable:
            if not writable:
                return job.read_only(rebuild)
            try:
                return job.run(rebuild)
            except OSError as exc:
                if isinstance(exc, StorageError) or exc.errno not in NOT_WRITABLE | DISK_FULL:
                    raise
                raise storage_error(exc, path) from None


class _Build:
    """One ``ImageStore.build`` call, run while holding the store's lock."""

    def __init__(self, store_cls: type[ImageStore], dataset: Dataset, split: str, encoder: Encoder, path: Path,
                 samples: list[Sample], dtype: str | None, index: str | None, batch_size: int, workers: int,
                 shard_size: int) -> None:
        self.cls, self.dataset, self.split, self.encoder, self.path = store_cls, dataset, split, encoder, path
        self.samples, self.dtype, self.index_spec = samples, dtype, index
        self.batch_size, self.workers, self.shard_size = batch_size, workers, shard_size
        self.split_fp = dataset.split_fingerprint(split)

    # -- an existing store -------------------------------------------------------------------------
    def _existing(self) -> tuple[ImageStore, list[int]] | None:
        """The finished store at the path, checked against this build, and the rows whose files changed."""
        if not (self.path / MANIFEST).is_file():
            return None
        store = self.cls._open_unlocked(self.path, self.encoder.fingerprint)
        ds = store.manifest["dataset"]
        if ds.get("samples_fingerprint") != self.split_fp or ds.get("num_samples") != len(self.samples):
            raise StoreMismatchError(
                f"image store {self.path} holds another sample list of {ds.get('name')}/{store.manifest['split']} "
                f"than {self.dataset.name}/{self.split} now has; use another --store path or delete the old store"
            )
        if self.dtype is not None and self.dtype != store.manifest["dtype"]:
            raise StoreMismatchError(
                f"image store {self.path} holds {store.manifest['dtype']} embeddings, not {self.dtype} as asked; "
                f"rebuild it in {self.dtype} with --rebuild, or pass another --store path"
            )
        stored = {int(i): (int(s), int(m)) for i, s, m in zip(store.sample_indices, store._sizes, store._mtimes)}
        stored.update({int(e["index"]): (int(e["size"]), int(e["mtime_ns"])) for e in store.manifest["skipped"]})
        changed = [i for i, s in enumerate(self.samples) if stored.get(i) != self.dataset.image_signature(s)]
        return store, changed

    def run(self, rebuild: bool) -> ImageStore:
        if rebuild:
            log.info("rebuilding the image store at %s", self.path)
            _remove_store_files(self.path)
        else:
            try:
                found = self._existing()
            except _OtherFormat as exc:
                log.warning("%s: rebuilding it in the current format", exc)
                _remove_store_files(self.path)
                found = None
            if found is not None:
                store, changed = found
                if changed:
                    return self._refresh(store, changed)
                if self.index_spec is not None and self.index_spec != store.manifest["index"]:
                    return self._reindex(store)
                return store
        return self._build_from_shards()

    def read_only(self, rebuild: bool) -> ImageStore:
        """Serve a finished, up-to-date store from a folder zsclip cannot write; anything else is an error."""
        advice = "Point ZSCLIP_HOME at a writable folder, or pass --store DIR"
        if rebuild or not (self.path / MANIFEST).is_file():
            raise StorageError(f"cannot build the image store at {self.path}: the folder is not writable. {advice}")
        store, changed = self._existing()  # type: ignore[misc]
        if changed:
            raise StorageError(f"image store {self.path} is out of date ({len(changed)} image file(s) changed since "
                               f"it was built) and its folder is not writable, so it cannot be refreshed. {advice}")
        if self.index_spec is not None and self.index_spec != store.manifest["index"]:
            raise StorageError(f"image store {self.path} has index {store.manifest['index']!r}, not "
                               f"{self.index_spec!r}, and its folder is not writable. {advice}")
        return store

    # -- encoding ----------------------------------------------------------------------------------
    def _encode(self, rows: Sequence[int], pool: ThreadPoolExecutor, advance: Any
                ) -> tuple[np.ndarray, list[int], list[tuple[int, str]], list[tuple[int, int]]]:
        """Encode the samples at ``rows``: (embeddings, rows encoded, (row, error) skipped, signature per row).

        Signatures are taken before the images are read, so a file changed meanwhile is seen next time.
        """
        chunk = [self.samples[i] for i in rows]
        signatures = [self.dataset.image_signature(s) for s in chunk]
        emb, ok, bad = _encode_samples(self.dataset, chunk, self.encoder, pool, self.batch_size, advance)
        return emb, [rows[i] for i in ok], [(rows[i], e) for i, e in bad], signatures

    def _build_from_shards(self) -> ImageStore:
        build_dir = self.path / BUILD
        build_dir.mkdir(exist_ok=True)
        ident_path = build_dir / IDENTITY
        identity = {"model_fingerprint": self.encoder.fingerprint, "dataset": self.dataset.name,
                    "split": self.split, "samples_fingerprint": self.split_fp, "num_samples": len(self.samples)}
        previous = _read_identity(ident_path)
        if previous is not None:
            if any(previous.get(k) != identity[k] for k in ("model_fingerprint", "dataset", "split",
                                                            "samples_fingerprint")):
                raise StoreMismatchError(
                    f"an unfinished build at {self.path} was started with other settings ({previous}); it cannot "
                    f"be resumed with {identity}. Delete {build_dir} or use another --store path."
                )
            dtype = self.dtype or previous.get("dtype")
            if (previous.get("num_samples"), previous.get("shard_size"), previous.get("dtype")) != (
                    len(self.samples), self.shard_size, dtype):
                log.warning("discarding the unfinished build at %s: it was made with shard size %s and dtype %s, "
                            "this build uses %s and %s", self.path, previous.get("shard_size"),
                            previous.get("dtype"), self.shard_size, dtype)
                _remove_build_files(self.path)
                build_dir.mkdir(exist_ok=True)
                previous = None
        self.dtype = self.dtype or (previous or {}).get("dtype") or "float16"
        identity.update({"dtype": self.dtype, "shard_size": self.shard_size})
        if previous is None:
            write_json_atomic(ident_path, identity)

        n, size = len(self.samples), self.shard_size
        shards = [(s, range(s * size, min(n, (s + 1) * size))) for s in range((n + size - 1) // size)]
        todo = []
        for s, rows in shards:
            shard = build_dir / f"shard_{s:05d}.npz"
            if shard.is_file() and _load_shard(shard, rows, self.encoder.embed_dim, self.dtype) is None:
                log.warning("re-encoding %s: it is damaged or incomplete (left by an interrupted build)", shard)
                shard.unlink()
            if not shard.is_file():
                todo.append((s, rows))
        if len(todo) < len(shards):
            log.info("resuming store build at %s: %d of %d shards done", self.path, len(shards) - len(todo),
                     len(shards))
        stats = BuildStats()
        with progress_bar(f"encoding {self.dataset.name}/{self.split}", total=sum(len(r) for _, r in todo)) \
                as advance, ThreadPoolExecutor(max_workers=self.workers) as pool:
            for s, rows in todo:
                emb, ok, bad, signatures = self._encode(list(rows), pool, advance)
                _check_vectors(emb, ok, self.samples)
                with atomic_path(build_dir / f"shard_{s:05d}.npz", suffix=".npz") as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, embeddings=emb.astype(self.dtype), ok=np.asarray(ok, dtype=np.int64),
                             bad=np.asarray([b[0] for b in bad], dtype=np.int64),
                             errors=np.asarray([b[1] for b in bad], dtype=str),
                             signatures=np.asarray(signatures, dtype=np.int64).reshape(-1, 2))
                stats.images_encoded += len(ok)
        parts = [_load_shard(build_dir / f"shard_{s:05d}.npz", rows, self.encoder.embed_dim, self.dtype)
                 for s, rows in shards]
        if any(p is None for p in parts):
            raise ZsclipError(f"a shard of the build at {self.path} changed while it was being finished; run again")
        emb = np.concatenate([p["embeddings"] for p in parts])  # type: ignore[index]
        ok = np.concatenate([p["ok"] for p in parts])  # type: ignore[index]
        bad = [(int(i), str(e)) for p in parts for i, e in zip(p["bad"], p["errors"])]  # type: ignore[index]
        signatures = np.concatenate([p["signatures"] for p in parts])  # type: ignore[index]
        store = self._publish(emb, ok, bad, signatures, self.index_spec or "Flat", stats)
        _remove_build_files(self.path)
        return store

    def _refresh(self, store: ImageStore, changed: list[int]) -> ImageStore:
        """Re-encode the images whose files changed and republish the store with them."""
        log.warning("%d image file(s) of %s/%s changed since the store at %s was built; encoding them again",
                    len(changed), self.dataset.name, self.split, self.path)
        n = len(self.samples)
        old = np.asarray(store.embeddings)
        row_of = {int(i): r for r, i in enumerate(store.sample_indices)}
        signatures = np.full((n, 2), -1, dtype=np.int64)
        for i, s, m in zip(store.sample_indices, store._sizes, store._mtimes):
            signatures[int(i)] = (s, m)
        errors = {int(e["index"]): str(e["error"]) for e in store.manifest["skipped"]}
        for e in store.manifest["skipped"]:
            signatures[int(e["index"])] = (e["size"], e["mtime_ns"])
        stats = BuildStats()
        with progress_bar(f"encoding {self.dataset.name}/{self.split}", total=len(changed)) as advance, \
                ThreadPoolExecutor(max_workers=self.workers) as pool:
            new_emb, new_ok, new_bad, new_sigs = self._encode(changed, pool, advance)
        _check_vectors(new_emb, new_ok, self.samples)
        stats.images_encoded = len(new_ok)
        signatures[changed] = np.asarray(new_sigs, dtype=np.int64).reshape(-1, 2)
        new_rows = dict(zip(new_ok, new_emb))
        changed_set = set(changed)
        for i in changed:
            errors.pop(i, None)
        errors.update(dict(new_bad))
        ok = [i for i in range(n) if (i in new_rows) or (i not in changed_set and i in row_of)]
        emb = np.stack([new_rows[i] if i in new_rows else old[row_of[i]] for i in ok]) if ok else \
            np.zeros((0, store.dim))
        bad = sorted(errors.items())
        return self._publish(emb.astype(store.manifest["dtype"]), np.asarray(ok, dtype=np.int64), bad, signatures,
                             store.manifest["index"], stats, dtype=store.manifest["dtype"])

    def _reindex(self, store: ImageStore) -> ImageStore:
        """Rebuild only the FAISS index of ``store`` with another factory string (no image is encoded)."""
        assert self.index_spec is not None
        log.info("rebuilding the index of %s as %r", self.path, self.index_spec)
        index = _make_index(np.ascontiguousarray(store.embeddings, dtype=np.float32), self.index_spec)
        manifest = dict(store.manifest, index=self.index_spec)
        (self.path / MANIFEST).unlink()
        _write_index(self.path, index, manifest)
        write_json_atomic(self.path / MANIFEST, manifest)
        return self.cls._open_unlocked(self.path, self.encoder.fingerprint)

    def _publish(self, emb: np.ndarray, ok: np.ndarray, bad: list[tuple[int, str]], signatures: np.ndarray,
                 index_spec: str, stats: BuildStats, dtype: str | None = None) -> ImageStore:
        """Write embeddings, metadata and index, then the manifest with their checksums (last)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        dtype = dtype or self.dtype or "float16"
        samples = self.samples
        skipped = [{"index": i, "path": samples[i].path, "error": e, "size": int(signatures[i][0]),
                    "mtime_ns": int(signatures[i][1])} for i, e in bad]
        if len(ok) == 0:
            raise ZsclipError(f"no image of {self.dataset.name}/{self.split} could be read ({len(skipped)} "
                              f"unreadable); first error: {skipped[0] if skipped else 'none'}")
        index = _make_index(np.ascontiguousarray(emb, dtype=np.float32), index_spec)  # fails before any write
        (self.path / MANIFEST).unlink(missing_ok=True)  # unpublished while its files change
        with atomic_path(self.path / EMBEDDINGS, suffix=".npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(emb, dtype=dtype))
        table = pa.table({
            "index": pa.array(ok, pa.int64()),
            "path": pa.array([samples[int(i)].path for i in ok], pa.string()),
            "label": pa.array([samples[int(i)].label for i in ok], pa.int32()),
            "split": pa.array([self.split] * len(ok), pa.string()),
            "size": pa.array(signatures[ok, 0], pa.int64()),
            "mtime_ns": pa.array(signatures[ok, 1], pa.int64()),
        })
        with atomic_path(self.path / METADATA, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        manifest = {
            "format": STORE_FORMAT,
            "zsclip_version": __version__,
            "model": self.encoder.describe(),
            "dataset": {**{k: v for k, v in self.dataset.describe().items() if k != "splits"}, "split": self.split,
                        "samples_fingerprint": self.split_fp, "num_samples": len(samples)},
            "split": self.split,
            "count": int(len(ok)),
            "dim": int(emb.shape[1]),
            "dtype": dtype,
            "index": index_spec,
            "skipped": skipped,
            "files": {name: {"sha256": _sha256(self.path / name)} for name in (EMBEDDINGS, METADATA)},
        }
        _write_index(self.path, index, manifest)
        write_json_atomic(self.path / MANIFEST, manifest)
        stats.images_skipped = len(skipped)
        stats.skipped = skipped
        if skipped:
            log.warning("%d unreadable image(s) skipped in %s/%s, e.g. %s", len(skipped), self.dataset.name,
                        self.split, skipped[0]["path"])
        store = self.cls(self.path, manifest)
        store.build_stats = stats
        return store


def _write_index(path: Path, index: Any, manifest: dict[str, Any]) -> None:
    """Write ``index.faiss`` atomically and record its checksum in ``manifest["files"]``."""
    import faiss

    with atomic_path(path / INDEX, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))
    manifest["files"] = {**manifest["files"], INDEX: {"sha256": _sha256(path / INDEX)}}


def _read_identity(path: Path) -> dict[str, Any] | None:
    """The identity of an unfinished build, or None when there is none (or it is unreadable)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        log.warning("ignoring the unreadable %s", path)
        return None
    return data if isinstance(data, dict) else None


def _load_shard(path: Path, rows: range, dim: int, dtype: str) -> dict[str, np.ndarray] | None:
    """A shard's arrays if it is whole and covers exactly ``rows``; None when it is damaged or partial."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("embeddings", "ok", "bad", "errors", "signatures")}
    except Exception:  # any unreadable shard (truncated zip, missing array, bad header) is simply redone
        return None
    emb, ok, bad = arrays["embeddings"], arrays["ok"], arrays["bad"]
    whole = (
        sorted(ok.tolist() + bad.tolist()) == list(rows)
        and emb.shape == (len(ok), dim) and emb.dtype == np.dtype(dtype) and bool(np.isfinite(emb).all())
        and len(arrays["errors"]) == len(bad) and arrays["signatures"].shape == (len(rows), 2)
    )
    return arrays if whole else None


def _encode_samples(dataset: Dataset, samples: Sequence[Any], encoder: Encoder, pool: ThreadPoolExecutor,
                    batch_size: int, advance: Any) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decode + preprocess images in threads, encode them in batches; unreadable ones are reported."""
    import torch

    def load(i: int) -> tuple[int, Any, str | None]:
        try:
            return i, encoder.preprocess(dataset.load_image(samples[i])), None
        except Exception as exc:  # any decode error: the image is skipped and counted, never a crash
            return i, None, f"{type(exc).__name__}: {exc}"

    out, ok, bad = [], [], []
    for start in range(0, len(samples), batch_size):
        results = list(pool.map(load, range(start, min(start + batch_size, len(samples)))))
        tensors = [r[1] for r in results if r[1] is not None]
        ok += [r[0] for r in results if r[1] is not None]
        bad += [(r[0], r[2]) for r in results if r[1] is None]
        if tensors:
            out.append(encoder.encode_images(torch.stack(tensors)))
        advance(len(results))
    emb = np.concatenate(out) if out else np.zeros((0, encoder.embed_dim), dtype=np.float32)
    return emb, ok, bad


def _text_digest(text: str, vec: bytes) -> bytes:
    """The check value stored with a cached text embedding: binds the vector to its text."""
    return hashlib.blake2b(text.encode("utf-8") + b"\0" + vec, digest_size=16).digest()


class TextEmbeddingCache:
    """Text embeddings of one model, keyed by the exact text: a text is encoded once, ever.

    Backed by ``CACHE/text-cache/<fingerprint>.sqlite`` (or ``path``). ``encode`` returns the embeddings of
    all given texts, encoding only those not yet stored; ``texts_encoded`` counts what this object encoded and
    ``texts_requested`` the distinct texts asked for per call. Every row read is checked against its digest
    (and for a finite unit vector of the model's dimension): a failed check is a ``CorruptCacheError``.
    Rows written by older versions (no digest) are encoded again. In a folder zsclip cannot write, the
    cache is read as it is and texts it lacks are encoded without being stored.
    """

    def __init__(self, encoder: Encoder, path: str | Path | None = None) -> None:
        self.encoder = encoder
        self.path = Path(path) if path else cache_root() / "text-cache" / f"{encoder.fingerprint}.sqlite"
        self.texts_encoded = 0
        self.texts_requested = 0
        self.read_only = False
        self.available = True  # False: no cache file and none can be made; every text is encoded in memory
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.execute("CREATE TABLE IF NOT EXISTS emb (text TEXT PRIMARY KEY, vec BLOB NOT NULL, digest BLOB)")
                if "digest" not in {r[1] for r in db.execute("PRAGMA table_info(emb)")}:
                    db.execute("ALTER TABLE emb ADD COLUMN digest BLOB")
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                db.execute("INSERT OR IGNORE INTO meta VALUES ('fingerprint', ?)", (encoder.fingerprint,))
                row = db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE:
                raise
            self.read_only = True
            log.warning("text cache %s cannot be written (%s): reading it as it is; new texts are not cached",
                        self.path, exc.strerror or exc)
            row = self._read_only_fingerprint()
        if row is not None and row[0] != encoder.fingerprint:
            raise StoreMismatchError(f"text cache {self.path} belongs to model fingerprint {row[0]}, not "
                                     f"{encoder.fingerprint}; pass another cache path")

    def _read_only_fingerprint(self) -> tuple[str] | None:
        """The fingerprint row of a cache read without writing (None when there is no usable file)."""
        if not self.path.is_file():
            self.available = False
            return None
        with self._db() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"emb", "meta"} <= tables:
                return None
            return db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()

    @contextlib.contextmanager
    def _db(self) -> Any:
        """A connection to the cache; SQLite errors become errors that name the file and what to do."""
        try:
            with sqlite_connection(self.path, read_only=self.read_only) as db:
                yield db
        except sqlite3.DatabaseError as exc:
            message = str(exc).lower()
            if "full" in message:
                raise storage_error(OSError(28, "database or disk is full"), self.path) from None
            if "readonly" in message or "read-only" in message or "unable to open" in message:
                raise storage_error(OSError(30, str(exc)), self.path) from None
            if "locked" in message or "busy" in message:
                raise
            raise CorruptCacheError(f"text cache {self.path} is damaged ({exc}); it is not used. Delete the file "
                                    "(it is rebuilt on the next run)") from None

    def _check_row(self, text: str, blob: bytes, digest: bytes) -> np.ndarray:
        """The vector of one cached row, after checking it; ``CorruptCacheError`` when a check fails."""
        vec = np.frombuffer(blob, dtype=np.float32) if len(blob) % 4 == 0 else np.zeros(0, np.float32)
        problem = None
        if bytes(digest) != _text_digest(text, bytes(blob)):
            problem = "does not match its digest (the vector was changed)"
        elif vec.shape != (self.encoder.embed_dim,) or not np.isfinite(vec).all():
            problem = f"is not a finite vector of dimension {self.encoder.embed_dim}"
        elif abs(float(np.linalg.norm(vec)) - 1.0) > 1e-3:
            problem = "is not a unit vector"
        if problem:
            raise CorruptCacheError(f"text cache {self.path}: the stored embedding of {text[:80]!r} {problem}; "
                                    "the cache is damaged and is not used. Delete the file (it is rebuilt on the "
                                    "next run)")
        return vec

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embeddings among ``texts`` (missing texts, and rows without a digest, are absent)."""
        found: dict[str, np.ndarray] = {}
        if not self.available:
            return found
        unique = list(dict.fromkeys(texts))
        with self._db() as db:
            if self.read_only and "digest" not in {r[1] for r in db.execute("PRAGMA table_info(emb)")}:
                return found
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                rows = db.execute(f"SELECT text, vec, digest FROM emb WHERE text IN ({','.join('?' * len(part))})",
                                  part)
                for text, blob, digest in rows:
                    if digest is not None:
                        found[text] = self._check_row(text, blob, digest)
        return found

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embeddings (``len(texts) × D`` float32, normalised) of ``texts``, encoding only the missing ones."""
        found = self.lookup(texts)
        unique = list(dict.fromkeys(texts))
        self.texts_requested += len(unique)
        missing = [t for t in unique if t not in found]
        if missing:
            store = not self.read_only
            with progress_bar("encoding texts", total=len(missing)) as advance, \
                    (self._db() if store else contextlib.nullcontext()) as db:
                for start in range(0, len(missing), batch_size):
                    part = missing[start : start + batch_size]
                    vecs = np.asarray(self.encoder.encode_texts(part, batch_size=batch_size), dtype=np.float32)
                    if store:
                        rows = [(t, v.tobytes(), _text_digest(t, v.tobytes())) for t, v in zip(part, vecs)]
                        db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)", rows)
                        db.commit()  # each batch is durable on its own
                    found.update(zip(part, vecs))
                    self.texts_encoded += len(part)
                    advance(len(part))
        if not texts:
            return np.zeros((0, self.encoder.embed_dim), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    def __len__(self) -> int:
        if not self.available:
            return 0
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])
