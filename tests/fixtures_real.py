"""Caption corpora for the REAL tests, generated in code: raw LAION metadata shards and clip-retrieval folders.

Captions name the classes of a dataset by their official name or by a "nickname" (the first word of the
name reversed), and some name nothing; embeddings are seeded random unit vectors of the model's dimension,
with each class's images pulled towards one random direction so that training has something to learn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zsclip.corpus import write_clip_retrieval


def nickname(name: str) -> str:
    return name.split()[0][::-1].lower() + "ix"


def corpus_rows(classnames: Sequence[str], per_class: int = 12, unnamed: int = 10,
                seed: int = 0) -> tuple[list[str], list[int]]:
    """Captions and their class (-1: names nothing). Class 0 is named mostly by its nickname; the last class
    is never named."""
    rng = random.Random(seed)
    captions, labels = [], []
    for c, name in enumerate(classnames[:-1]):
        for k in range(per_class):
            use = nickname(name) if (c == 0 and k % 4 != 0) else name
            captions.append(rng.choice(["a photo of a {}", "{} in the wild", "my {}, outdoors"]).format(use))
            labels.append(c)
    for k in range(unnamed):
        captions.append(f"a landscape photo number {k}")
        labels.append(-1)
    order = list(range(len(captions)))
    rng.shuffle(order)
    return [captions[i] for i in order], [labels[i] for i in order]


def embeddings(labels: Sequence[int], dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(labels) + 2, dim))
    x = rng.normal(size=(len(labels), dim)) + 2.0 * centres[np.asarray(labels)]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_clip_retrieval(folder: Path, classnames: Sequence[str], dim: int, shard_rows: int = 20,
                        text_emb: bool = True, seed: int = 0) -> Path:
    captions, labels = corpus_rows(classnames, seed=seed)
    img = embeddings(labels, dim, seed)
    txt = embeddings(labels, dim, seed + 1) if text_emb else None
    return write_clip_retrieval(folder, captions, img, txt, shard_rows=shard_rows, columns={"label": labels})


def make_laion_metadata(folder: Path, classnames: Sequence[str], shards: int = 2, seed: int = 0) -> Path:
    """Raw LAION metadata parquet shards: TEXT, URL, NSFW, similarity."""
    captions, _ = corpus_rows(classnames, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(captions) // shards)
    for k in range(shards):
        part = captions[k * step:(k + 1) * step]
        pq.write_table(pa.table({"TEXT": part, "URL": [f"http://x/{i}.jpg" for i in range(len(part))],
                                 "NSFW": ["UNLIKELY"] * len(part), "similarity": [0.3] * len(part)}),
                       folder / f"part-{k:05d}.parquet")
    return folder


def make_image_corpus(folder: Path, classnames: Sequence[str], shard_rows: int = 20, seed: int = 0) -> Path:
    """A clip-retrieval folder WITHOUT img_emb/: ``metadata/metadata_N.parquet`` (caption, image_path relative to
    the folder, url) and one small real JPEG per row under ``images/`` (class-coloured, as in the CUB fixture)."""
    from fixtures_data import class_image

    captions, labels = corpus_rows(classnames, seed=seed)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i, label in enumerate(labels):
        rel = f"images/{i:05d}.jpg"
        class_image(label if label >= 0 else len(classnames) + i % 3, 24, rng).save(folder / rel, format="JPEG")
        paths.append(rel)
    for k, lo in enumerate(range(0, len(captions), shard_rows)):
        hi = min(len(captions), lo + shard_rows)
        pq.write_table(pa.table({"caption": captions[lo:hi], "image_path": paths[lo:hi],
                                 "url": [f"http://x/{i}.jpg" for i in range(lo, hi)]}),
                       folder / "metadata" / f"metadata_{k}.parquet")
    return folder
