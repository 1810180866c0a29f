"""Benchmark: DDS's per-image selection at ImageNet scale against one pass of the CbD scorer, in one run.

Synthetic normalised embeddings: 50,000 test images, 1,000 classes, a pool of 6,000 descriptions (6 per
class for CbD), dim 512. Two CbD baselines on the same pool embeddings: the folded mean-of-cosines scorer
(one 1,000-column product, zsclip's CbD path) and one pass over every image-text cosine (the 6,000-column
product plus a per-class reduction, the shape of the reference code's work). DDS adds the class-name
neighbourhoods, the gather/max/mean/top-m selection over ``S`` and the gathered descriptor cosines.

    python benchmarks/bench_dds.py                      # full size, random embeddings (worst case)
    python benchmarks/bench_dds.py --structured         # images clustered by class, look-alike class groups
    python benchmarks/bench_dds.py --images 5000        # quicker

DDS selects once per distinct neighbourhood, so its cost follows the number of distinct top-k class sets:
nearly one per image for random embeddings, far fewer when images cluster by class as real ones do.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zsclip.methods.dds import DDSClassifier
from zsclip.methods.pool import DescriptionPool
from zsclip.prompts import PromptSet
from zsclip.scoring import Scorer


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--structured", action="store_true",
                        help="class-structured embeddings (groups of look-alike classes) instead of random ones")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, c, per, d = args.images, args.classes, args.per_class, args.dim
    pool_emb = unit(rng.standard_normal((c * per, d), dtype=np.float32))
    if args.structured:  # classes in groups of 10 look-alikes; images near their class, names near theirs
        noise = lambda rows: unit(rng.standard_normal((rows, d), dtype=np.float32))  # noqa: E731
        groups = noise(c // 10 + 1)
        protos = unit(np.repeat(groups, 10, axis=0)[:c] + 0.6 * noise(c))
        labels = rng.integers(0, c, n)
        images = unit(protos[labels] + 1.0 * noise(n))
        names = unit(protos + 0.3 * noise(c))
        means = protos
    else:  # worst case: random embeddings, (almost) every neighbourhood distinct
        images = unit(rng.standard_normal((n, d), dtype=np.float32))
        names = unit(rng.standard_normal((c, d), dtype=np.float32))
        means = unit(rng.standard_normal((c, d), dtype=np.float32))
    texts = [[f"c{i} d{j}" for j in range(per)] for i in range(c)]
    pool = DescriptionPool.from_lists(texts)

    per_class = [[(t, t) for t in ts] for ts in texts]
    cbd = Scorer(PromptSet.from_lists([f"c{i}" for i in range(c)], per_class, "mean", "bench"), pool_emb)
    per_text = Scorer(PromptSet.from_lists([f"c{i}" for i in range(c)], per_class, "max", "bench"), pool_emb)
    dds = DDSClassifier(classnames=[f"c{i}" for i in range(c)], pool=pool, S=pool_emb @ means.T, name_emb=names,
                        pool_emb=pool_emb, k=args.k, m=args.m, form="classname-free", aggregation="mean", weight=1.0,
                        template="a photo of a {}.", cache=None)
    hoods = dds.neighbourhoods(images)[1]
    distinct = len(np.unique(np.sort(hoods, axis=1), axis=0))
    print(f"DDS benchmark ({'structured' if args.structured else 'random'} embeddings): {n} images, {c} classes, "
          f"pool {len(pool.texts)}, dim {d}, k={args.k}, m={args.m}; {distinct} distinct neighbourhoods")
    dds.scores(images[:1000])  # warm-up: first torch use
    t_cbd, _ = best_time(lambda: cbd.scores(images), args.repeat)
    t_text, _ = best_time(lambda: per_text.scores(images), args.repeat)
    t_dds, scores = best_time(lambda: dds.scores(images), args.repeat)
    print(f"{'method':52s} {'seconds':>8s} {'vs folded CbD':>14s} {'vs per-text pass':>17s}")
    for name, t in (("CbD scorer, folded (mean of cosines = 1,000 columns)", t_cbd),
                    ("scorer over every text (6,000 columns + max per class)", t_text),
                    ("DDS classname-free (select + score)", t_dds)):
        print(f"{name:52s} {t:8.3f} {t / t_cbd:13.2f}x {t / t_text:16.2f}x")
    assert scores.shape == (n, c)


if __name__ == "__main__":
    main()
