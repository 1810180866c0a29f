"""Text-to-image search in an image store: the store's nearest images to a text, by its FAISS index.

The text is encoded by the model that made the store (its manifest names it), so the query and the stored
image embeddings share one space. ``search_store`` is the notebook-friendly call; ``zsclip store search``
prints the same rows.

    >>> hits = search_store("a photo of a red bird", "~/.cache/zsclip/stores/cub-test-...", k=5)
    >>> [(h["rank"], h["row"], h["path"], h["score"]) for h in hits]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ZsclipError

if TYPE_CHECKING:
    from .models import Encoder
    from .stores import ImageStore


def store_encoder(store: ImageStore, device: str = "cpu") -> Encoder:
    """The model named by the store's manifest, loaded; refused when its fingerprint is not the store's."""
    from .models import load_model

    described = store.manifest["model"]
    encoder = load_model(described["model"], described.get("pretrained"), device=device)
    if encoder.fingerprint != described.get("fingerprint"):
        raise ZsclipError(f"store {store.path}: the model its manifest names ({described['model']}, "
                          f"{described.get('pretrained')}) loads with fingerprint {encoder.fingerprint}, the store "
                          f"was made with {described.get('fingerprint')}; pass the model it was made with")
    return encoder


def search_store(texts: str | Sequence[str], store: str | Path | ImageStore, k: int = 5,
                 encoder: Encoder | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """The ``k`` store images nearest to each text: ``[{query, rank, row, score, label, path}]``, best first.

    ``encoder`` defaults to the model the store's manifest names (``store_encoder``).
    """
    from .stores import ImageStore

    if k < 1:
        raise ZsclipError(f"k must be ≥ 1, got {k}")
    queries = [texts] if isinstance(texts, str) else list(texts)
    opened = store if isinstance(store, ImageStore) else ImageStore.open(Path(store).expanduser())
    encoder = encoder or store_encoder(opened, device)
    scores, rows = opened.search(encoder.encode_texts(queries), k)
    return [{"query": q, "rank": rank, "row": int(r), "score": float(s), "label": int(opened.labels[r]),
             "path": opened.paths[r]}
            for q, srow, rrow in zip(queries, scores, rows)
            for rank, (s, r) in enumerate(zip(srow, rrow), 1) if r >= 0]
