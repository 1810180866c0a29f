"""Benchmark: what the integrity checks cost when an image store is opened, against a bare memory-map.

A synthetic store of 50,000 × 512 float16 embeddings (an ImageNet-validation-sized split) is written with
the real ``_Build._publish`` path; then ``ImageStore.open`` (SHA-256 of the embeddings and metadata, shape,
dtype and count checks) is timed against ``np.load(mmap_mode="r")`` plus reading the metadata, which is
what opening cost before the checks. Also times a scoring pass (embeddings @ 1,000 class vectors) to put
the check in proportion to the work a run does with the store.

    python benchmarks/bench_store_open.py [--images 50000] [--dim 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq

from zsclip.datasets import Sample
from zsclip.stores import ImageStore, _Build


def best_of(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(args.images, args.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    samples = [Sample(path=f"img/{i:06d}.jpg", label=i % 1000) for i in range(args.images)]
    dataset = SimpleNamespace(name="synthetic", describe=lambda: {"name": "synthetic", "root": None})
    encoder = SimpleNamespace(describe=lambda: {"model": "synthetic", "fingerprint": "0" * 16})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        job = _Build.__new__(_Build)
        job.cls, job.dataset, job.split, job.encoder, job.path = ImageStore, dataset, "val", encoder, path
        job.samples, job.dtype, job.split_fp = samples, "float16", "synthetic"
        job._publish(emb, np.arange(args.images), [], np.full((args.images, 2), -1, np.int64), "Flat",
                     SimpleNamespace())
        bare = best_of(lambda: (np.load(path / "embeddings.npy", mmap_mode="r"),
                                pq.read_table(path / "metadata.parquet")))
        checked = best_of(lambda: ImageStore.open(path))
        classes = rng.normal(size=(1000, args.dim)).astype(np.float32)
        store = ImageStore.open(path)
        score = best_of(lambda: np.asarray(store.embeddings, dtype=np.float32) @ classes.T, n=3)
    size_mb = args.images * args.dim * 2 / 1e6
    print(f"store: {args.images} x {args.dim} float16 ({size_mb:.0f} MB)")
    print(f"open, bare memory-map + metadata: {bare * 1000:8.1f} ms")
    print(f"open, with integrity checks:      {checked * 1000:8.1f} ms   ({checked / bare:.1f}x bare)")
    print(f"one scoring pass over 1000 classes: {score * 1000:6.1f} ms   (checks = {checked / score:.2f}x of it)")


if __name__ == "__main__":
    main()
