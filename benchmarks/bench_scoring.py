"""Benchmark: zsclip's CbD scorer against the reference per-class loop, at ImageNet scale, in one run.

Synthetic normalised embeddings (default 50,000 images × 1,000 classes × 6 descriptors, dim 512).

* reference — the loop of the CbD authors' evaluation: for each image batch, for each class,
  ``image_batch @ class_descriptors.T`` then the mean over descriptors (torch, batch 640);
* zsclip ``mean`` — ``Scorer`` with CbD's mean-of-cosines aggregation (one C-column product);
* zsclip ``max`` — ``Scorer`` with max aggregation (full N × M product, chunked, plus ``reduceat``);
* matmul — a plain ``V @ Tᵀ`` of the same size (N × D by D × M), the machine's rate for this shape.

"eff. GFLOP/s" counts the work of the N × M × D product (2·N·M·D flops) whatever the method computes, so a
method that needs fewer flops shows an effective rate above the plain product's; "actual GFLOP/s" counts
what the method really computes (the mean scorer folds the descriptors into C class weights: 2·N·C·D), and
"% of matmul rate" compares that with the plain product's rate. Peak memory is the peak of NumPy
allocations during the call (tracemalloc, on top of the inputs).

    python benchmarks/bench_scoring.py            # full size (about a minute on 2 cores)
    python benchmarks/bench_scoring.py --images 5000 --classes 200
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch

from zsclip.prompts import PromptSet
from zsclip.scoring import Scorer


def reference_loop(images: torch.Tensor, per_class: list[torch.Tensor], batch: int = 640) -> torch.Tensor:
    """The authors' loop: per image batch, per class, a product with the class's descriptors, then the mean."""
    out = []
    for start in range(0, images.shape[0], batch):
        block = images[start : start + batch]
        cumulative = [(block @ desc.T).mean(dim=1) for desc in per_class]
        out.append(torch.stack(cumulative, dim=1))
    return torch.cat(out)


def timed(fn, repeat: int = 1):
    """Best wall time of ``repeat`` calls, the last result, and the peak traced allocation in bytes."""
    best, result, peak = float("inf"), None, 0
    for _ in range(repeat):
        tracemalloc.start()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, result, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--descriptors", type=int, default=6)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    n, c, k, d = args.images, args.classes, args.descriptors, args.dim
    m = c * k
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, d), dtype=np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts = rng.standard_normal((m, d), dtype=np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    per_class = [[(f"c{i} d{j}", f"d{j}") for j in range(k)] for i in range(c)]
    names = [f"c{i}" for i in range(c)]
    mean_set = PromptSet.from_lists(names, per_class, "mean", "bench")
    max_set = PromptSet.from_lists(names, per_class, "max", "bench")
    flops = 2.0 * n * m * d

    print(f"scoring benchmark: {n} images × {c} classes × {k} descriptors, dim {d}; "
          f"threads: torch {torch.get_num_threads()}")
    t_ref, ref, _ = timed(lambda: reference_loop(torch.from_numpy(images),
                                                [torch.from_numpy(texts[i * k:(i + 1) * k]) for i in range(c)]))
    t_mean, got_mean, peak_mean = timed(lambda: Scorer(mean_set, texts).scores(images), args.repeat)
    t_max, got_max, peak_max = timed(lambda: Scorer(max_set, texts).scores(images), args.repeat)
    t_mm, _, peak_mm = timed(lambda: images @ texts.T, args.repeat)
    max_err = float(np.abs(ref.numpy() - got_mean).max())

    done = 2.0 * n * c * d  # what the mean scorer computes after folding the descriptors into class weights
    rows = [("reference loop (per batch, per class)", t_ref, flops, None),
            ("zsclip scorer, mean (CbD)", t_mean, done, peak_mean),
            ("zsclip scorer, max", t_max, flops, peak_max),
            ("plain matmul V @ T^T (same size)", t_mm, flops, peak_mm)]
    mm_rate = flops / t_mm
    print(f"{'method':40s} {'seconds':>8s} {'eff. GFLOP/s':>13s} {'vs loop':>8s} {'actual GFLOP/s':>15s} "
          f"{'% of matmul rate':>17s} {'peak MB':>8s}")
    for name, t, work, peak in rows:
        peak_txt = f"{peak / 2**20:8.0f}" if peak is not None else f"{'-':>8s}"
        print(f"{name:40s} {t:8.3f} {flops / t / 1e9:13.1f} {t_ref / t:7.1f}x {work / t / 1e9:15.1f} "
              f"{100 * work / t / mm_rate:16.0f}% {peak_txt}")
    print(f"max |reference - zsclip mean| = {max_err:.2e}")


if __name__ == "__main__":
    main()
