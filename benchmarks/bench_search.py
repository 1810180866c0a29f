"""Benchmark: template-set evaluations per second of the search evaluator against a naive evaluation, in one run.

Two settings:

* toy world — the toy world's CLIP (``--model toyworld``), its 100 classes, 1 training shot per class (the
  real k-shot features of a search), CLIP's 80 templates × 3 type words as the library (ProAPO's stage-1
  library, 800+ templates);
* synthetic ImageNet — 1,000 classes, 240 templates (80 × 3 type words), 1 shot = 1,000 images, d = 512:
  random unit image features and per-template class embeddings (a class direction plus a template
  direction plus noise, normalised).

Both evaluators compute the same fitness terms (top-1, top-5, CE at logit scale 100, R) of random template
sets of 1 to 8 templates (the sizes ProAPO's stage 1 evaluates):

* naive — what a search without caches does per candidate: encode every text of the set (templates × class
  names) with a text tower, average into class weights, one product with the image features, the terms.
  Toy world: the toy CLIP's real text tower. Synthetic ImageNet: the toy CLIP's text tower stands in for
  the text encoder (it encodes the set's 1,000-class texts; the 512-d embeddings used afterwards are the
  synthetic ones): a lower bound, as a ViT-B/32 text tower costs far more per text.
* zsclip — ``TemplateSetEvaluator``: per-template class blocks and their cosines with the features cached
  once; a set is a sum of cached arrays and a per-class rescale.

Also stage-2 edits at ImageNet scale (``ClassPromptEvaluator``): 17 classes (int(2.5·ln 1000)) get new items,
only their cosines are recomputed. Evaluations/s are reported with R (β = 0.05, the argparse default) and
without it (β = 0, the published YAMLs' stage-2 setting).

    python benchmarks/bench_search.py               # a few minutes on 2 cores (the toy stores are built once)
    python benchmarks/bench_search.py --skip-toy    # synthetic ImageNet only
    git show REV:zsclip/search/evaluate.py > /tmp/old_evaluate.py
    python benchmarks/bench_search.py --baseline /tmp/old_evaluate.py   # old against new, interleaved, one process
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numba
import numpy as np
import torch

import zsclip.search.evaluate as evaluate_module
from zsclip.search.evaluate import ClassPromptEvaluator, FitnessWeights, TemplateSetEvaluator


def naive_terms(features: np.ndarray, labels: np.ndarray, text_emb: np.ndarray, n_templates: int,
                weights: FitnessWeights, scale: float = 100.0) -> float:
    """Fitness of one set from its texts' embeddings (templates × classes, template-major), in numpy."""
    c = text_emb.shape[0] // n_templates
    w = text_emb.reshape(n_templates, c, -1).mean(0)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    s = features @ w.T
    true = s[np.arange(len(labels)), labels]
    rank = (s > true[:, None]).sum(1)
    z = s * scale
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    ce = float((lse - true * scale).mean())
    r = 0.0
    if weights.r:
        g = w.astype(np.float64) @ w.T.astype(np.float64)
        r = float(np.sqrt(np.square(np.triu(g - np.eye(len(g)), 1)).sum()))
    return weights.combine(float((rank == 0).mean() * 100), float((rank < 5).mean() * 100), r, ce)


def random_sets(n_templates: int, count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(n_templates, size=int(rng.integers(1, 9)), replace=False).tolist())
            for _ in range(count)]


def rate(fn, items) -> tuple[float, float]:
    """(evaluations per second, seconds) of ``fn`` over ``items``."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    seconds = time.perf_counter() - start
    return len(items) / seconds, seconds


def toy_world(fast_count: int, naive_count: int) -> list[tuple[str, float]]:
    from zsclip.datasets import get_dataset
    from zsclip.pipeline import encoder_for
    from zsclip.prompts import format_template
    from zsclip.search.data import search_data
    from zsclip.search.evaluate import template_blocks
    from zsclip.search.proapo import template_library
    from zsclip.stores import TextEmbeddingCache

    ds = get_dataset("toyworld")
    enc = encoder_for(ds)
    data = search_data(ds, enc, shots=1, seed=1)
    library = template_library(ds.card.get("type_words", ["creature"]))
    cache = TextEmbeddingCache(enc)
    t0 = time.perf_counter()
    blocks = template_blocks(library, ds.classnames, cache)
    setup = time.perf_counter() - t0
    sets = random_sets(len(library), fast_count)
    out = []
    for beta in (0.05, 0.0):
        weights = FitnessWeights(r=beta)
        ev = TemplateSetEvaluator(data.fit_features, data.fit_labels, len(ds.classnames), weights, enc.logit_scale)
        t0 = time.perf_counter()
        for t, b in blocks.items():
            ev.add(t, b)
        setup_ev = time.perf_counter() - t0
        fast, _ = rate(lambda s, ev=ev: ev.evaluate([library[i] for i in s]), sets)
        out.append((f"toy world (C=100, N=100, d=64, library {len(library)}), beta={beta:g}: zsclip", fast))

        def naive(s: list[int], weights: FitnessWeights = weights) -> float:
            texts = [format_template(library[i], c) for i in s for c in ds.classnames]
            emb = enc.encode_texts(texts)
            return naive_terms(data.fit_features, data.fit_labels, emb, len(s), weights, enc.logit_scale)

        slow, _ = rate(naive, sets[:naive_count])
        out.append((f"toy world, beta={beta:g}: naive (toy text tower per candidate)", slow))
    out.append((f"toy world: one-off block setup ({len(library)} templates, text cache + products) s",
                setup + setup_ev))
    return out


def imagenet(fast_count: int, naive_count: int) -> list[tuple[str, float]]:
    from zsclip.datasets import get_dataset
    from zsclip.pipeline import encoder_for

    c, n_templates, d = 1000, 240, 512
    rng = np.random.default_rng(0)

    def unit(a: np.ndarray) -> np.ndarray:
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)

    classes = unit(rng.standard_normal((c, d)))
    styles = unit(rng.standard_normal((n_templates, d)))
    labels = np.arange(c)
    features = unit(classes + 0.8 * unit(rng.standard_normal((c, d))))
    out = []
    t0 = time.perf_counter()
    blocks = np.stack([unit(classes + 0.3 * styles[t] + 0.2 * rng.standard_normal((c, d), dtype=np.float32))
                       for t in range(n_templates)])
    gen = time.perf_counter() - t0
    sets = random_sets(n_templates, fast_count)
    encoder = encoder_for(get_dataset("toyworld"))
    names = [f"class number {i}" for i in range(c)]
    for beta in (0.05, 0.0):
        weights = FitnessWeights(r=beta)
        ev = TemplateSetEvaluator(features, labels, c, weights, 100.0)
        t0 = time.perf_counter()
        for t in range(n_templates):
            ev.add(str(t), blocks[t])
        setup = time.perf_counter() - t0
        fast, _ = rate(lambda s, ev=ev: ev.evaluate([str(i) for i in s]), sets)
        out.append((f"synthetic ImageNet (C=1000, N=1000, d=512, 240 templates), beta={beta:g}: zsclip", fast))

        def naive(s: list[int], weights: FitnessWeights = weights) -> float:
            encoder.encode_texts([f"template {i} of a {name}." for i in s for name in names])
            emb = blocks[s].reshape(len(s) * c, d)
            return naive_terms(features, labels, emb, len(s), weights)

        slow, _ = rate(naive, sets[:naive_count])
        out.append((f"synthetic ImageNet, beta={beta:g}: naive (toy text tower for the texts)", slow))
        gap = max(abs(ev.evaluate([str(i) for i in s]).fitness
                      - naive_terms(features, labels, blocks[s].reshape(len(s) * c, d), len(s), weights))
                  for s in sets[:naive_count])
        out.append((f"synthetic ImageNet, beta={beta:g}: largest |fitness(zsclip) - fitness(naive, float64 R)|",
                    gap))

        # stage 2: edits of 17 classes with 4 items each out of 12
        items = [unit(rng.standard_normal((12, d))) + classes[k] for k in range(c)]
        ev2 = ClassPromptEvaluator(features, labels, items, weights, 100.0)
        ev2.set_base([list(range(4)) for _ in range(c)])
        edits = []
        for _ in range(fast_count):
            group = rng.choice(c, size=17, replace=False)
            edits.append({int(k): sorted(rng.choice(12, size=4, replace=False).tolist()) for k in group})
        stage2, _ = rate(ev2.evaluate, edits)
        out.append((f"synthetic ImageNet stage-2 edit of 17 classes, beta={beta:g}: zsclip", stage2))
    out.append(("synthetic ImageNet: one-off setup of 240 cached blocks s", setup + gen))
    return out


def load_baseline(path: str):
    """An older ``zsclip/search/evaluate.py`` (e.g. ``git show REV:zsclip/search/evaluate.py > FILE``) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zsclip.search._baseline_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def interleaved(baseline, count: int) -> list[tuple[str, float]]:
    """Synthetic ImageNet stage-1 evaluations/s of ``baseline``'s evaluator and this one, alternating set by set
    in one process (so a loaded machine slows both alike), and the ratio."""
    c, n_templates, d = 1000, 240, 512
    rng = np.random.default_rng(0)
    unit = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    classes = unit(rng.standard_normal((c, d)))
    features = unit(classes + 0.8 * unit(rng.standard_normal((c, d))))
    labels = np.arange(c)
    sets = [[str(i) for i in s] for s in random_sets(n_templates, count, seed=1)]
    out = []
    for beta in (0.05, 0.0):
        evs = [module.TemplateSetEvaluator(features, labels, c, module.FitnessWeights(r=beta), 100.0)
               for module in (baseline, evaluate_module)]
        for t in range(n_templates):
            block = unit(classes + 0.3 * unit(rng.standard_normal(d)) + 0.2 * rng.standard_normal((c, d)))
            for ev in evs:
                ev.add(str(t), block)
        for ev in evs:
            ev.evaluate(sets[0])  # compiles the kernels
        spent = [0.0, 0.0]
        for s in sets:
            for k, ev in enumerate(evs):
                t0 = time.perf_counter()
                ev.evaluate(s)
                spent[k] += time.perf_counter() - t0
        old, new = (len(sets) / x for x in spent)
        out += [(f"interleaved synthetic ImageNet, beta={beta:g}: baseline evaluator", old),
                (f"interleaved synthetic ImageNet, beta={beta:g}: this evaluator", new),
                (f"interleaved synthetic ImageNet, beta={beta:g}: speed-up x", new / old)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", type=int, default=400, help="candidate sets timed with the zsclip evaluator")
    parser.add_argument("--naive", type=int, default=4, help="candidate sets timed with the naive evaluation")
    parser.add_argument("--skip-toy", action="store_true", help="only the synthetic ImageNet setting")
    parser.add_argument("--baseline", help="an older evaluate.py to time against this one, interleaved (only this)")
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: their choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, numba threads: {numba.get_num_threads()}, "
          f"load average: {os.getloadavg()[0]:.2f}", flush=True)
    if args.baseline:
        rows = interleaved(load_baseline(args.baseline), args.fast)
    else:
        rows = [] if args.skip_toy else toy_world(args.fast, args.naive)
        rows += imagenet(args.fast, args.naive)
    for name, value in rows:
        if name.endswith(" x"):
            print(f"{name[:-2]}: {value:.2f}x")
        elif name.endswith(" s"):
            print(f"{name}: {value:,.2f}")
        elif name.endswith("|"):
            print(f"{name}: {value:.2e}")
        else:
            print(f"{name}: {value:,.2f} evals/s")


if __name__ == "__main__":
    main()
