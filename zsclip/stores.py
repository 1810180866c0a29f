"""Cached embedding stores: image stores on disk and the content-addressed text-embedding cache.

An image store holds the normalised image embeddings of one dataset split made by one model:

    STORE/manifest.json      model fingerprint, dataset, split, count, dim, dtype, zsclip version (written last)
    STORE/embeddings.npy     N × D, float16 or float32, memory-mapped when opened
    STORE/metadata.parquet   index, path, label, split of each stored image
    STORE/index.faiss        a FAISS inner-product index (exact ``Flat`` unless another factory string is given)
    STORE/build/             only while building: one shard file per ``shard_size`` samples

A build writes each shard atomically, so an interrupted build resumes from its last whole shard. Images
that cannot be read are skipped and listed in the manifest. The text cache is one SQLite database per
model fingerprint (WAL mode): concurrent writers are safe and a crash loses at most the batch in flight.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import atomic_path, sqlite_connection, write_json_atomic
from ._version import __version__
from .errors import StoreMismatchError, ZsclipError
from .paths import cache_root
from .progress import progress_bar

if TYPE_CHECKING:
    from .datasets import Dataset
    from .models import Encoder

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FORMAT = 1


@dataclass
class BuildStats:
    """What one ``ImageStore.build`` call did: counts for the run record."""

    images_encoded: int = 0
    images_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def default_store_path(dataset: Dataset, split: str, fingerprint: str) -> Path:
    """Where the store of (dataset, split, model) lives under the cache root."""
    name = f"{dataset.name}-{split}-{dataset.split_fingerprint(split)[:10]}-{fingerprint[:12]}"
    return cache_root() / "stores" / name


class ImageStore:
    """Embeddings, metadata and a FAISS index of one dataset split, made by one model.

    Open an existing store with ``ImageStore.open(path)``; build (or resume, or reuse) one with
    ``ImageStore.build(dataset, split, encoder)``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.embeddings: np.ndarray = np.load(self.path / "embeddings.npy", mmap_mode="r")
        import pyarrow.parquet as pq

        table = pq.read_table(self.path / "metadata.parquet")
        self.labels: np.ndarray = table.column("label").to_numpy()
        self.paths: list[str] = table.column("path").to_pylist()
        self.sample_indices: np.ndarray = table.column("index").to_numpy()
        self._index: Any = None
        self.build_stats = BuildStats(images_skipped=len(manifest.get("skipped", [])),
                                      skipped=list(manifest.get("skipped", [])))

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, fingerprint: str | None = None) -> ImageStore:
        """Open a finished store; refuse it when ``fingerprint`` (the model's) differs from the store's."""
        path = Path(path).expanduser()
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            hint = " (an unfinished build is there: run `zsclip embed` again to resume it)" if (
                path / "build").is_dir() else ""
            raise ZsclipError(f"no image store at {path}: {MANIFEST} is missing{hint}")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != STORE_FORMAT:
            raise ZsclipError(f"store {path} has format {manifest.get('format')}; this zsclip reads {STORE_FORMAT}. "
                              "Rebuild it with `zsclip embed`.")
        if fingerprint is not None and manifest["model"]["fingerprint"] != fingerprint:
            raise StoreMismatchError(
                f"image store {path} was made by model {manifest['model'].get('model')} "
                f"(fingerprint {manifest['model']['fingerprint']}), not by the model in use (fingerprint "
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
        """The FAISS index (read on first use)."""
        if self._index is None:
            import faiss

            self._index = faiss.read_index(str(self.path / "index.faiss"))
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
              dtype: str = "float16", index: str = "Flat", batch_size: int = 64, workers: int = 4,
              shard_size: int = 1024) -> ImageStore:
        """Build the store of ``dataset``/``split`` with ``encoder``, or reuse / resume one at ``path``.

        A finished store with the same model and the same sample list is returned as is (0 images
        encoded). A store at ``path`` made by another model, or of another sample list, is refused.
        """
        if dtype not in ("float16", "float32"):
            raise ZsclipError(f"store dtype must be float16 or float32, got {dtype!r}")
        samples = dataset.samples(split)
        if not samples:
            raise ZsclipError(f"split {split!r} of dataset {dataset.name!r} has no samples")
        split_fp = dataset.split_fingerprint(split)
        path = Path(path).expanduser() if path else default_store_path(dataset, split, encoder.fingerprint)
        identity = {"model_fingerprint": encoder.fingerprint, "dataset": dataset.name, "split": split,
                    "samples_fingerprint": split_fp, "dtype": dtype, "shard_size": shard_size}
        if (path / MANIFEST).is_file():
            store = cls.open(path, encoder.fingerprint)
            if store.manifest["dataset"]["samples_fingerprint"] != split_fp:
                raise StoreMismatchError(
                    f"image store {path} holds another sample list of {store.manifest['dataset']['name']}/"
                    f"{store.manifest['dataset']['split']} than {dataset.name}/{split} now has; use another "
                    "--store path or delete the old store"
                )
            store.build_stats = BuildStats(images_skipped=len(store.manifest.get("skipped", [])),
                                           skipped=list(store.manifest.get("skipped", [])))
            return store

        build_dir = path / "build"
        build_dir.mkdir(parents=True, exist_ok=True)
        ident_path = build_dir / "identity.json"
        if ident_path.is_file():
            previous = json.loads(ident_path.read_text())
            if previous != identity:
                raise StoreMismatchError(
                    f"an unfinished build at {path} was started with other settings ({previous}); it cannot be "
                    f"resumed with {identity}. Delete {build_dir} or use another --store path."
                )
        else:
            write_json_atomic(ident_path, identity)

        stats = BuildStats()
        n_shards = (len(samples) + shard_size - 1) // shard_size
        todo = [s for s in range(n_shards) if not (build_dir / f"shard_{s:05d}.npz").is_file()]
        if len(todo) < n_shards:
            log.info("resuming store build at %s: %d of %d shards done", path, n_shards - len(todo), n_shards)
        with progress_bar(f"encoding {dataset.name}/{split}", total=sum(
                min(shard_size, len(samples) - s * shard_size) for s in todo)) as advance, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for s in todo:
                chunk = samples[s * shard_size : (s + 1) * shard_size]
                emb, ok, bad = _encode_samples(dataset, chunk, encoder, pool, batch_size, advance)
                with atomic_path(build_dir / f"shard_{s:05d}.npz", suffix=".npz") as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, embeddings=emb.astype(dtype), ok=np.asarray(ok, dtype=np.int64) + s * shard_size,
                                 bad=np.asarray([b[0] + s * shard_size for b in bad], dtype=np.int64),
                                 errors=np.asarray([b[1] for b in bad], dtype=str))
                stats.images_encoded += len(ok)
        return cls._finish(path, build_dir, dataset, split, encoder, samples, identity, index, stats)

    @classmethod
    def _finish(cls, path: Path, build_dir: Path, dataset: Dataset, split: str, encoder: Encoder,
                samples: Sequence[Any], identity: dict[str, Any], index_spec: str, stats: BuildStats) -> ImageStore:
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        shards = sorted(build_dir.glob("shard_*.npz"))
        embs, ok_idx, skipped = [], [], []
        for shard in shards:
            with np.load(shard) as z:
                embs.append(z["embeddings"])
                ok_idx.append(z["ok"])
                skipped += [{"path": samples[int(i)].path, "error": str(e)} for i, e in zip(z["bad"], z["errors"])]
        emb = np.concatenate(embs) if embs else np.zeros((0, 0), dtype=identity["dtype"])
        ok = np.concatenate(ok_idx) if ok_idx else np.zeros(0, dtype=np.int64)
        if len(ok) == 0:
            raise ZsclipError(f"no image of {dataset.name}/{split} could be read ({len(skipped)} unreadable); "
                              f"first error: {skipped[0] if skipped else 'none'}")
        with atomic_path(path / "embeddings.npy", suffix=".npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, emb)
        table = pa.table({
            "index": pa.array(ok, pa.int64()),
            "path": pa.array([samples[int(i)].path for i in ok], pa.string()),
            "label": pa.array([samples[int(i)].label for i in ok], pa.int32()),
            "split": pa.array([split] * len(ok), pa.string()),
        })
        with atomic_path(path / "metadata.parquet", suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        vectors = np.ascontiguousarray(emb, dtype=np.float32)
        try:
            index = faiss.index_factory(vectors.shape[1], index_spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ZsclipError(f"--index {index_spec!r} is not a valid FAISS index-factory string: {exc}") from None
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        with atomic_path(path / "index.faiss", suffix=".faiss") as tmp:
            faiss.write_index(index, str(tmp))
        manifest = {
            "format": STORE_FORMAT,
            "zsclip_version": __version__,
            "model": encoder.describe(),
            "dataset": {**{k: v for k, v in dataset.describe().items() if k != "splits"}, "split": split,
                        "samples_fingerprint": identity["samples_fingerprint"], "num_samples": len(samples)},
            "split": split,
            "count": int(len(ok)),
            "dim": int(emb.shape[1]),
            "dtype": identity["dtype"],
            "index": index_spec,
            "skipped": skipped,
        }
        write_json_atomic(path / MANIFEST, manifest)
        shutil.rmtree(build_dir, ignore_errors=True)
        stats.images_skipped = len(skipped)
        stats.skipped = skipped
        if skipped:
            log.warning("%d unreadable image(s) skipped in %s/%s, e.g. %s", len(skipped), dataset.name, split,
                        skipped[0]["path"])
        store = cls(path, manifest)
        store.build_stats = stats
        return store


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


class TextEmbeddingCache:
    """Text embeddings of one model, keyed by the exact text: a text is encoded once, ever.

    Backed by ``CACHE/text-cache/<fingerprint>.sqlite`` (or ``path``). ``encode`` returns the embeddings of
    all given texts, encoding only those not yet stored; ``texts_encoded`` counts what this object encoded and
    ``texts_requested`` the distinct texts asked for per call.
    """

    def __init__(self, encoder: Encoder, path: str | Path | None = None) -> None:
        self.encoder = encoder
        self.path = Path(path) if path else cache_root() / "text-cache" / f"{encoder.fingerprint}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.texts_encoded = 0
        self.texts_requested = 0
        with sqlite_connection(self.path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS emb (text TEXT PRIMARY KEY, vec BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('fingerprint', ?)", (encoder.fingerprint,))
            row = db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row[0] != encoder.fingerprint:
            raise StoreMismatchError(f"text cache {self.path} belongs to model fingerprint {row[0]}, not "
                                     f"{encoder.fingerprint}; pass another cache path")

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embeddings among ``texts`` (missing texts are absent from the result)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(texts))
        with sqlite_connection(self.path) as db:
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                rows = db.execute(f"SELECT text, vec FROM emb WHERE text IN ({','.join('?' * len(part))})", part)
                for text, blob in rows:
                    found[text] = np.frombuffer(blob, dtype=np.float32)
        return found

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embeddings (``len(texts) × D`` float32, normalised) of ``texts``, encoding only the missing ones."""
        found = self.lookup(texts)
        unique = list(dict.fromkeys(texts))
        self.texts_requested += len(unique)
        missing = [t for t in unique if t not in found]
        if missing:
            with progress_bar("encoding texts", total=len(missing)) as advance, sqlite_connection(self.path) as db:
                for start in range(0, len(missing), batch_size):
                    part = missing[start : start + batch_size]
                    vecs = self.encoder.encode_texts(part, batch_size=batch_size)
                    db.executemany("INSERT OR IGNORE INTO emb VALUES (?, ?)",
                                   [(t, v.astype(np.float32).tobytes()) for t, v in zip(part, vecs)])
                    db.commit()  # each batch is durable on its own
                    found.update(zip(part, vecs))
                    self.texts_encoded += len(part)
                    advance(len(part))
        if not texts:
            return np.zeros((0, self.encoder.embed_dim), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    def __len__(self) -> int:
        with sqlite_connection(self.path) as db:
            return int(db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])
