"""Caption corpora read in place: raw LAION metadata shards or clip-retrieval embedding folders.

A corpus is a folder of parquet shards zsclip reads where it lies (nothing is copied or indexed):

- raw LAION metadata: ``*.parquet`` shards with the caption in ``TEXT`` (plus ``URL``, ``NSFW``, ...);
- a clip-retrieval embedding folder: ``metadata/metadata_N.parquet`` (``caption``, ``image_path``,
  ``url``, ...) with row-aligned ``img_emb/img_emb_N.npy`` and optionally ``text_emb/text_emb_N.npy``
  (float16, L2-normalised) — the layout of LAION's released embedding folders and of
  ``zsclip world corpus``.

``Corpus.open`` checks the layout up front (caption column present in every shard, embedding files
aligned with their metadata, no shard missing) so that a long pass never fails half-way; it reads only
parquet footers and ``.npy`` headers. Captions stream in bounded memory (``Corpus.batches``); embeddings
are memory-mapped and addressed by (shard, row) or by global row (rows numbered across shards in shard
order). An NSFW filter blanks the captions of dropped rows but keeps row numbers, so rows stay aligned
with the embedding files. ``Corpus.manifest`` says what was read, for provenance.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._io import write_json_atomic
from ._version import __version__
from .errors import ZsclipError

log = logging.getLogger(__name__)

Layout = Literal["laion-metadata", "clip-retrieval"]
NsfwFilter = Literal["none", "nsfw", "unsure"]
EmbeddingKind = Literal["image", "text"]

#: NSFW column values each filter drops (LAION tags rows "NSFW", "UNSURE" or "UNLIKELY")
NSFW_DROP: dict[str, tuple[str, ...]] = {"none": (), "nsfw": ("NSFW",), "unsure": ("NSFW", "UNSURE")}
#: caption columns tried, in order, when none is given
DEFAULT_CAPTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "laion-metadata": ("TEXT", "caption"),
    "clip-retrieval": ("caption", "TEXT"),
}
DEFAULT_PATTERNS: dict[str, str] = {"laion-metadata": "*.parquet", "clip-retrieval": "metadata_*.parquet"}
DEFAULT_BATCH_ROWS = 65_536
MANIFEST_FORMAT = 1

_NUMBERED = re.compile(r"_(\d+)\.(?:parquet|npy)$")


@dataclass(frozen=True)
class Shard:
    """One metadata parquet file and its row-aligned embedding files (when the corpus has them)."""

    index: int
    path: Path
    rows: int
    row_offset: int
    image_embeddings: Path | None = None
    text_embeddings: Path | None = None

    @property
    def name(self) -> str:
        """The file name of the metadata shard."""
        return self.path.name


@dataclass(frozen=True)
class CaptionBatch:
    """A run of consecutive rows of one shard: ``captions[i]`` is row ``start + i`` (null when dropped)."""

    shard: Shard
    start: int
    captions: pa.Array
    kept: int

    @property
    def rows(self) -> int:
        """Number of rows in the batch, dropped ones included."""
        return len(self.captions)


def _numbered(folder: Path, stem: str, suffix: str) -> dict[int, Path]:
    """``{N: path}`` for the files ``{stem}_N{suffix}`` in ``folder``; two files with one N are an error."""
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    for path in folder.glob(f"{stem}_*{suffix}"):
        m = _NUMBERED.search(path.name)
        if not m:
            continue
        n = int(m.group(1))
        if n in out:
            raise ZsclipError(f"two shards numbered {n} in {folder}: {out[n].name} and {path.name}")
        out[n] = path
    return out


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in an ``.npy`` header (memory-maps the file; reads no data)."""
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (ValueError, OSError) as exc:
        raise ZsclipError(f"cannot read embedding file {path}: {exc}") from None


def _parquet_footer(path: Path) -> pq.FileMetaData:
    try:
        return pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as exc:
        raise ZsclipError(f"cannot read parquet shard {path}: {exc}") from None


class Corpus:
    """A caption corpus folder, opened in place. Build with ``Corpus.open``."""

    def __init__(self, path: Path, layout: Layout, shards: list[Shard], caption_column: str,
                 nsfw_filter: NsfwFilter, nsfw_column: str | None, columns: list[str], pattern: str) -> None:
        self.path = path
        self.layout: Layout = layout
        self.shards = shards
        self.caption_column = caption_column
        self.nsfw_filter: NsfwFilter = nsfw_filter
        self.nsfw_column = nsfw_column
        self.columns = columns
        self.pattern = pattern
        self._offsets = np.array([s.row_offset for s in shards] + [sum(s.rows for s in shards)], dtype=np.int64)

    # ----------------------------------------------------------------------------------------------------
    # opening
    @classmethod
    def open(cls, path: str | Path, caption_column: str | None = None, pattern: str | None = None,
             nsfw_filter: NsfwFilter = "none") -> Corpus:
        """Open the corpus at ``path`` (a folder, or one parquet file) and check its layout.

        ``caption_column``: default ``TEXT`` for raw LAION metadata, ``caption`` for clip-retrieval folders.
        ``pattern``: the glob of the metadata shards (default ``*.parquet`` / ``metadata_*.parquet``).
        ``nsfw_filter``: ``none``; ``nsfw`` drops rows whose NSFW column says NSFW; ``unsure`` also drops
        UNSURE. Shards are ordered by their number (clip-retrieval) or file name (raw metadata).
        """
        root = Path(path).expanduser()
        if nsfw_filter not in NSFW_DROP:
            raise ZsclipError(f"unknown NSFW filter {nsfw_filter!r}; choose one of {', '.join(NSFW_DROP)}")
        if not root.exists():
            raise ZsclipError(f"corpus not found: {root}")
        if root.is_file():
            layout: Layout = "laion-metadata"
            pattern = root.name
            meta_paths = [root]
            root = root.parent
        elif (root / "metadata").is_dir():
            layout = "clip-retrieval"
            pattern = pattern or DEFAULT_PATTERNS[layout]
            meta_paths = sorted((root / "metadata").glob(pattern), key=_shard_sort_key)
        else:
            layout = "laion-metadata"
            pattern = pattern or DEFAULT_PATTERNS[layout]
            meta_paths = sorted(root.glob(pattern), key=lambda p: p.as_posix())
        meta_paths = [p for p in meta_paths if p.is_file()]
        if not meta_paths:
            where = root / "metadata" if layout == "clip-retrieval" else root
            raise ZsclipError(f"empty corpus: no parquet shards matching {pattern!r} in {where}. "
                              "Pass the folder holding the shards, or --pattern.")
        footers = [(p, _parquet_footer(p)) for p in meta_paths]
        columns = footers[0][1].schema.to_arrow_schema().names
        caption = cls._caption_column(footers, caption_column, layout)
        nsfw_column = cls._nsfw_column(footers, nsfw_filter)
        if layout == "clip-retrieval":
            shards = cls._clip_retrieval_shards(root, footers)
        else:
            shards, offset = [], 0
            for i, (p, meta) in enumerate(footers):
                shards.append(Shard(i, p, meta.num_rows, offset))
                offset += meta.num_rows
        if not sum(s.rows for s in shards):
            raise ZsclipError(f"empty corpus: the {len(shards)} shard(s) in {root} hold no rows")
        log.info("corpus %s: %s layout, %d shards, %d rows, captions in %r", root, layout, len(shards),
                 sum(s.rows for s in shards), caption)
        return cls(root, layout, shards, caption, nsfw_filter, nsfw_column, columns, pattern)

    @staticmethod
    def _caption_column(footers: list[tuple[Path, pq.FileMetaData]], wanted: str | None, layout: Layout) -> str:
        first_path, first = footers[0]
        names = first.schema.to_arrow_schema().names
        if wanted is None:
            found = [c for c in DEFAULT_CAPTION_COLUMNS[layout] if c in names]
            if not found:
                raise ZsclipError(
                    f"{first_path}: no caption column (looked for {', '.join(DEFAULT_CAPTION_COLUMNS[layout])}); "
                    f"its columns are: {', '.join(names)}. Name it with --caption-column.")
            wanted = found[0]
        for path, meta in footers:
            names = meta.schema.to_arrow_schema().names
            if wanted not in names:
                raise ZsclipError(f"{path}: no caption column {wanted!r} ({meta.num_rows} rows); its columns are: "
                                  f"{', '.join(names)}. Name the caption column with --caption-column.")
        return wanted

    @staticmethod
    def _nsfw_column(footers: list[tuple[Path, pq.FileMetaData]], nsfw_filter: NsfwFilter) -> str | None:
        if nsfw_filter == "none":
            return None
        first_path, first = footers[0]
        names = first.schema.to_arrow_schema().names
        matches = [n for n in names if n.lower() == "nsfw"]
        if not matches:
            raise ZsclipError(f"{first_path}: --nsfw-filter {nsfw_filter} needs an NSFW column; its columns are: "
                              f"{', '.join(names)}")
        for path, meta in footers[1:]:
            if matches[0] not in meta.schema.to_arrow_schema().names:
                raise ZsclipError(f"{path}: no {matches[0]!r} column for --nsfw-filter {nsfw_filter}")
        return matches[0]

    @staticmethod
    def _clip_retrieval_shards(root: Path, footers: list[tuple[Path, pq.FileMetaData]]) -> list[Shard]:
        numbers: list[int] = []
        for path, _ in footers:
            m = _NUMBERED.search(path.name)
            if not m:
                raise ZsclipError(f"{path}: a clip-retrieval metadata shard must be named metadata_N.parquet")
            numbers.append(int(m.group(1)))
        if len(set(numbers)) != len(numbers):
            raise ZsclipError(f"two metadata shards share a number in {root / 'metadata'}")
        gaps = sorted(set(range(min(numbers), max(numbers) + 1)) - set(numbers))
        if gaps:
            log.warning("metadata shards %s are absent from %s; reading the others", gaps[:10], root / "metadata")
        embedding_files = {kind: _numbered(root / f"{kind}_emb", f"{kind}_emb", ".npy") for kind in ("img", "text")}
        for files in embedding_files.values():
            extra = sorted(set(files) - set(numbers))
            if extra:
                n = extra[0]
                raise ZsclipError(f"missing shard: {files[n]} ({_npy_shape(files[n])[0]} rows) has no metadata "
                                  f"shard metadata_{n}.parquet in {root / 'metadata'}")
        shards: list[Shard] = []
        offset = 0
        dims: dict[str, tuple[int, Path]] = {}
        for i, ((path, meta), n) in enumerate(zip(footers, numbers)):
            found: dict[str, Path | None] = {}
            for kind, files in embedding_files.items():
                if not files:
                    found[kind] = None
                    continue
                emb = files.get(n)
                if emb is None:
                    raise ZsclipError(f"missing shard: {root / f'{kind}_emb'} has no {kind}_emb_{n}.npy for "
                                      f"{path.name} ({meta.num_rows} rows)")
                shape = _npy_shape(emb)
                if len(shape) != 2 or shape[0] != meta.num_rows:
                    raise ZsclipError(f"misaligned shard: {emb} holds {shape[0] if shape else 0} rows (shape "
                                      f"{shape}) but {path} holds {meta.num_rows}; embedding files must be "
                                      "row-aligned 1:1 with their metadata shard")
                dim, first = dims.setdefault(kind, (shape[1], emb))
                if shape[1] != dim:
                    raise ZsclipError(f"{emb} has dimension {shape[1]} but {first} has {dim}")
                found[kind] = emb
            shards.append(Shard(i, path, meta.num_rows, offset, found["img"], found["text"]))
            offset += meta.num_rows
        return shards

    # ----------------------------------------------------------------------------------------------------
    # rows
    @property
    def num_rows(self) -> int:
        """Rows in all shards (rows the NSFW filter drops included: row numbers never change)."""
        return int(self._offsets[-1])

    @property
    def has_image_embeddings(self) -> bool:
        """Whether every shard has a row-aligned ``img_emb`` file."""
        return all(s.image_embeddings is not None for s in self.shards)

    @property
    def has_text_embeddings(self) -> bool:
        """Whether every shard has a row-aligned ``text_emb`` file."""
        return all(s.text_embeddings is not None for s in self.shards)

    def locate(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row within shard) of each global row."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise ZsclipError(f"row out of range: the corpus {self.path} has rows 0..{self.num_rows - 1}")
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        return shard, rows - self._offsets[shard]

    def global_rows(self, shard: int, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Global row numbers of ``rows`` of shard ``shard``."""
        return self._offsets[shard] + np.asarray(rows, dtype=np.int64)

    # ----------------------------------------------------------------------------------------------------
    # captions
    def batches(self, shard: Shard | int, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[CaptionBatch]:
        """Stream the captions of one shard, ``batch_rows`` rows at a time, in row order.

        Memory stays bounded by one parquet row group plus one batch. Rows the NSFW filter drops come as
        nulls, so ``batch.start + i`` is always the shard row of ``batch.captions[i]``.
        """
        shard = self.shards[shard] if isinstance(shard, int) else shard
        columns = [self.caption_column] + ([self.nsfw_column] if self.nsfw_column else [])
        drop = pa.array(NSFW_DROP[self.nsfw_filter], type=pa.string())
        start = 0
        for record_batch in pq.ParquetFile(shard.path).iter_batches(batch_size=batch_rows, columns=columns):
            captions = record_batch.column(0)
            if not pa.types.is_string(captions.type) and not pa.types.is_large_string(captions.type):
                try:
                    captions = captions.cast(pa.large_string())
                except pa.ArrowException:
                    raise ZsclipError(f"{shard.path}: caption column {self.caption_column!r} holds "
                                      f"{captions.type}, not text") from None
            kept = len(captions)
            if self.nsfw_column:
                flags = record_batch.column(1).cast(pa.string())
                dropped = pc.fill_null(pc.is_in(pc.utf8_upper(flags), value_set=drop), False)
                captions = pc.if_else(dropped, pa.scalar(None, captions.type), captions)
                kept -= int(pc.sum(dropped).as_py() or 0)
            yield CaptionBatch(shard, start, captions, kept)
            start += len(captions)

    def captions(self, rows: Sequence[int] | np.ndarray) -> list[str | None]:
        """The captions of global ``rows`` (None where the NSFW filter drops a row), in the given order."""
        shard_of, local = self.locate(rows)
        out: list[str | None] = [None] * len(local)
        for s in np.unique(shard_of):
            pick = np.flatnonzero(shard_of == s)
            shard = self.shards[int(s)]
            table = pq.read_table(shard.path, columns=[self.caption_column]
                                  + ([self.nsfw_column] if self.nsfw_column else []))
            taken = table.take(pa.array(local[pick]))
            texts = taken.column(0).to_pylist()
            if self.nsfw_column:
                flags = taken.column(1).cast(pa.string()).to_pylist()
                drop = set(NSFW_DROP[self.nsfw_filter])
                texts = [None if (f or "").upper() in drop else t for t, f in zip(texts, flags)]
            for i, t in zip(pick, texts):
                out[i] = t
        return out

    def read_columns(self, shard: Shard | int, columns: Sequence[str]) -> pa.Table:
        """Whole columns of one shard (for per-row fields such as ``image_path`` or ``url``)."""
        shard = self.shards[shard] if isinstance(shard, int) else shard
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise ZsclipError(f"{shard.path}: no column(s) {', '.join(missing)}; its columns are: "
                              f"{', '.join(self.columns)}")
        return pq.read_table(shard.path, columns=list(columns))

    # ----------------------------------------------------------------------------------------------------
    # embeddings
    def embedding_file(self, shard: Shard | int, kind: EmbeddingKind = "image") -> np.ndarray:
        """The memory-mapped embedding matrix of one shard (rows aligned with its metadata)."""
        shard = self.shards[shard] if isinstance(shard, int) else shard
        path = shard.image_embeddings if kind == "image" else shard.text_embeddings
        if path is None:
            folder = "img_emb" if kind == "image" else "text_emb"
            raise ZsclipError(f"corpus {self.path} has no {kind} embeddings ({folder}/ folder) for {shard.name}")
        return np.load(path, mmap_mode="r")

    def embeddings(self, rows: Sequence[int] | np.ndarray, kind: EmbeddingKind = "image") -> np.ndarray:
        """The embeddings of global ``rows`` (in the given order), gathered from the memory-mapped files."""
        shard_of, local = self.locate(rows)
        out: np.ndarray | None = None
        for s in np.unique(shard_of):
            pick = np.flatnonzero(shard_of == s)
            matrix = self.embedding_file(int(s), kind)
            if out is None:
                out = np.empty((len(local), matrix.shape[1]), dtype=matrix.dtype)
            out[pick] = matrix[local[pick]]
        if out is None:
            dim = self.embedding_file(0, kind).shape[1]
            return np.empty((0, dim), dtype=np.float16)
        return out

    # ----------------------------------------------------------------------------------------------------
    # provenance
    def manifest(self) -> dict[str, Any]:
        """What this corpus is made of: layout, options and every shard with its size and mtime."""
        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            try:
                return p.relative_to(self.path).as_posix()
            except ValueError:
                return str(p)

        shards = []
        for s in self.shards:
            st = s.path.stat()
            shards.append({"metadata": rel(s.path), "rows": s.rows, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "img_emb": rel(s.image_embeddings), "text_emb": rel(s.text_embeddings)})
        return {"format": MANIFEST_FORMAT, "zsclip_version": __version__, "path": str(self.path.resolve()),
                "layout": self.layout, "pattern": self.pattern, "caption_column": self.caption_column,
                "nsfw_filter": self.nsfw_filter, "nsfw_column": self.nsfw_column, "rows": self.num_rows,
                "shards": shards}

    def write_manifest(self, path: str | Path, **extra: Any) -> Path:
        """Write ``manifest()`` (plus ``extra`` fields such as rows kept) as JSON, atomically."""
        path = Path(path)
        write_json_atomic(path, {**self.manifest(), **extra})
        return path


def _shard_sort_key(path: Path) -> tuple[int, str]:
    m = _NUMBERED.search(path.name)
    return (int(m.group(1)) if m else -1, path.name)


def write_clip_retrieval(out_dir: str | Path, captions: Sequence[str], image_embeddings: np.ndarray,
                         text_embeddings: np.ndarray | None = None, shard_rows: int = 1_000_000,
                         columns: dict[str, Sequence[Any]] | None = None) -> Path:
    """Write captions and row-aligned embeddings as a clip-retrieval folder (``metadata/``, ``img_emb/``,
    ``text_emb/``), ``shard_rows`` rows a shard; embeddings are L2-normalised and stored as float16.

    For corpora made in code (tests, notebooks, small exports); ``columns`` adds metadata columns.
    """
    out = Path(out_dir)
    n = len(captions)
    if len(image_embeddings) != n or (text_embeddings is not None and len(text_embeddings) != n):
        raise ZsclipError(f"write_clip_retrieval: {n} captions but {len(image_embeddings)} image embeddings"
                          + (f" and {len(text_embeddings)} text embeddings" if text_embeddings is not None else ""))
    for sub in ("metadata", "img_emb") + (("text_emb",) if text_embeddings is not None else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float16)

    for k, lo in enumerate(range(0, max(n, 1), shard_rows)):
        hi = min(n, lo + shard_rows)
        data: dict[str, Any] = {"caption": pa.array(list(captions[lo:hi]), pa.string()),
                                "image_path": pa.array([f"row:{i}" for i in range(lo, hi)], pa.string())}
        for name, values in (columns or {}).items():
            data[name] = pa.array(list(values[lo:hi]))
        np.save(out / "img_emb" / f"img_emb_{k}.npy", unit(image_embeddings[lo:hi]))
        if text_embeddings is not None:
            np.save(out / "text_emb" / f"text_emb_{k}.npy", unit(text_embeddings[lo:hi]))
        pq.write_table(pa.table(data), out / "metadata" / f"metadata_{k}.parquet")
    return out
