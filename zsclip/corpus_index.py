"""FAISS indices over a corpus's image and caption embeddings, built once and kept, and text search over them.

``CorpusIndex.open(corpus, kind, factory)`` returns the index of the corpus's ``img_emb`` (``kind="image"``) or
``text_emb`` (``kind="text"``) files, built with any FAISS factory string (``Flat``, ``HNSW32``,
``IVF1024,PQ32`` — an index that needs training is trained on a seeded sample of at most
``train_rows`` rows, as clip-retrieval/autofaiss do) under inner product, so scores are cosines of the
normalised embeddings. Indices are saved under ``<corpus>/index/`` when that folder can be written, else
under ``<zsclip cache>/corpus-index/``, keyed by the corpus manifest (shard files, sizes, mtimes), the kind
and the factory; a changed corpus builds a new one. ``search_corpus`` is the notebook-friendly text search
behind ``zsclip corpus search``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path, write_json_atomic
from .corpus import Corpus, EmbeddingKind
from .errors import ZsclipError
from .paths import cache_root

log = logging.getLogger(__name__)

DEFAULT_TRAIN_ROWS = 100_000
_ADD_CHUNK = 65_536


def _key(corpus: Corpus, kind: str, factory: str) -> str:
    from .real import cache_key

    manifest = corpus.manifest()
    shards = [{k: s[k] for k in ("metadata", "rows", "bytes", "mtime_ns", "img_emb", "text_emb")}
              for s in manifest["shards"]]
    return cache_key({"path": manifest["path"], "shards": shards, "kind": kind, "factory": factory})


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


@dataclass
class CorpusIndex:
    """A FAISS index over one kind of a corpus's embeddings; row ids are the corpus's global rows."""

    index: Any
    kind: str
    factory: str
    path: Path

    @classmethod
    def open(cls, corpus: Corpus, kind: EmbeddingKind = "image", factory: str = "Flat",
             train_rows: int = DEFAULT_TRAIN_ROWS, seed: int = 0, rebuild: bool = False) -> CorpusIndex:
        """The saved index of ``corpus``'s ``kind`` embeddings for ``factory``, built on first use."""
        import faiss

        has = corpus.has_image_embeddings if kind == "image" else corpus.has_text_embeddings
        if not has:
            folder = "img_emb" if kind == "image" else "text_emb"
            raise ZsclipError(f"corpus {corpus.path} has no {kind} embeddings ({folder}/ files beside metadata/); "
                              "a FAISS index needs them")
        name = f"{kind}-{_key(corpus, kind, factory)}.faiss"
        local = corpus.path / "index"
        folder = local if _writable(local) else cache_root() / "corpus-index"
        path = folder / name
        if not path.is_file():
            for other in (local / name, cache_root() / "corpus-index" / name):
                if other.is_file():
                    path = other
        if path.is_file() and not rebuild:
            return cls(faiss.read_index(str(path)), kind, factory, path)
        index = build_index(corpus, kind, factory, train_rows, seed)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / name, suffix=".faiss") as tmp:
            faiss.write_index(index, str(tmp))
        write_json_atomic((folder / name).with_suffix(".json"),
                          {"kind": kind, "factory": factory, "rows": int(index.ntotal), "corpus": corpus.manifest()})
        log.info("built %s index %s over %d %s embeddings", factory, folder / name, index.ntotal, kind)
        return cls(index, kind, factory, folder / name)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores and global corpus rows (``-1`` where fewer than ``k`` exist) of the ``k`` nearest."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return self.index.search(q, int(min(k, self.index.ntotal)))


def build_index(corpus: Corpus, kind: EmbeddingKind, factory: str, train_rows: int = DEFAULT_TRAIN_ROWS,
                seed: int = 0) -> Any:
    """A FAISS ``factory`` index (inner product) over every row of ``corpus``'s ``kind`` embeddings, in row
    order; trained on a seeded sample of at most ``train_rows`` rows when the factory needs training."""
    import faiss

    dim = corpus.embedding_file(0, kind).shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ZsclipError(f"FAISS cannot build index {factory!r}: {str(exc).strip().splitlines()[-1]}") from None
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(corpus.num_rows, size=min(train_rows, corpus.num_rows), replace=False))
        index.train(_unit(corpus.embeddings(sample, kind)))
    for shard in corpus.shards:
        matrix = corpus.embedding_file(shard, kind)
        for start in range(0, len(matrix), _ADD_CHUNK):
            index.add(_unit(matrix[start:start + _ADD_CHUNK]))
    return index


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def search_corpus(corpus: Corpus | str | Path, text: str | list[str], encoder: Any, k: int = 10,
                  kind: EmbeddingKind = "image", factory: str = "Flat") -> list[dict[str, Any]]:
    """The ``k`` corpus rows nearest to ``text`` (encoded by ``encoder``) by their image or caption embedding.

    Returns ``[{"query", "rank", "row", "score", "caption"}]`` (a ``pandas.DataFrame`` in a notebook).
    """
    opened = corpus if isinstance(corpus, Corpus) else Corpus.open(corpus)
    queries = [text] if isinstance(text, str) else list(text)
    index = CorpusIndex.open(opened, kind, factory)
    scores, rows = index.search(encoder.encode_texts(queries), k)
    out = []
    for q, (s_row, r_row) in enumerate(zip(scores, rows)):
        keep = r_row >= 0
        captions = opened.captions(r_row[keep])
        for rank, (s, r, c) in enumerate(zip(s_row[keep], r_row[keep], captions)):
            out.append({"query": queries[q], "rank": rank + 1, "row": int(r), "score": float(s), "caption": c})
    return out
