"""Benchmark: template-set evaluations per second of the search evaluator, the previous evaluator and a naive
evaluation, in one process.

Two settings:

* toy world — the toy world's CLIP (``--model toyworld``), its 100 classes, 1 training shot per class (the
  real k-shot features of a search), CLIP's 80 templates × 3 type words as the library (ProAPO's stage-1
  library, 800+ templates);
* synthetic ImageNet — 1,000 classes, 240 templates (80 × 3 type words), 1 shot = 1,000 images, d = 512:
  random unit image features and per-template class embeddings (a class direction plus a template
  direction plus noise, normalised).

Evaluators, all computing the fitness terms (top-1, top-5, CE at logit scale 100, and R when β ≠ 0):

* naive — what a search without caches does per candidate: encode every text of the set (templates × class
  names) with a text tower, average into class weights, one product with the image features, the terms.
  Toy world: the toy CLIP's real text tower. Synthetic ImageNet: the toy CLIP's text tower stands in for
  the text encoder (it encodes the set's 1,000-class texts; the 512-d embeddings used afterwards are the
  synthetic ones): a lower bound, as a ViT-B/32 text tower costs far more per text.
* previous — ``zsclip/search/evaluate.py`` and ``_kernels.py`` at ``--baseline-rev`` (read with ``git show``),
  one ``evaluate`` per candidate;
* zsclip — this ``TemplateSetEvaluator``: ``evaluate`` per candidate, and ``evaluate_many`` per batch (how
  ProAPO's screening and epochs call it).

Also ProAPO stage-2 edits at ImageNet scale (``ClassPromptEvaluator``, previous and this one): 17 classes
(int(2.5·ln 1000)) get new items, only their cosines are recomputed.

Workloads: random sets of 1 to 8 templates (as earlier versions of this benchmark), and ProAPO stage-1 epochs
(4 parents of 2–6 templates; per parent 8 add-one / 8 remove-one / 8 replace-one children, 8 mutations, 16
crossovers; deduplicated — ``zsclip.search.proapo.stage1_children``). The evaluators take turns, a slice of
candidates each, ``--rounds`` times, so a load swing on the shared machine slows all of them alike; each row
gives evaluations per second of wall time and per second of the process's CPU time (user + system, all
threads), and the load average is printed before and after. β = 0.05 is ProAPO's argparse default (R is
computed), β = 0 the published YAMLs' usual setting (R is not computed); the same evaluator objects are timed
with both weights.

    python benchmarks/bench_search.py               # toy world + synthetic ImageNet (the toy stores are built once)
    python benchmarks/bench_search.py --skip-toy --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

from zsclip.search.evaluate import FitnessWeights
from zsclip.search.proapo import stage1_children

ROOT = Path(__file__).resolve().parents[1]
#: the evaluator before the fixed-point / Gram / batched version
BASELINE_REV = "8b5e310"


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


def in_batches(sets: list[list[int]], size: int = 120) -> list[list[list[int]]]:
    return [sets[i:i + size] for i in range(0, len(sets), size)]


def proapo_epochs(n_templates: int, count: int, seed: int = 0) -> list[list[list[int]]]:
    """Batches of deduplicated ProAPO stage-1 candidates (one batch per epoch) until ``count`` candidates."""
    rng = np.random.default_rng(seed)
    batches, total, epoch = [], 0, 0
    while total < count:
        parents = [sorted(rng.choice(n_templates, size=int(rng.integers(2, 7)), replace=False).tolist())
                   for _ in range(4)]
        seen, batch = set(), []
        for _, ids in stage1_children(parents, n_templates, epoch % 8, rng):
            if tuple(ids) not in seen:
                seen.add(tuple(ids))
                batch.append(ids)
        batches.append(batch)
        total += len(batch)
        epoch += 1
    return batches


def load_baseline(rev: str):
    """``evaluate.py`` with its ``_kernels.py`` at git revision ``rev``, as modules beside the current ones."""
    texts = {}
    for name in ("_kernels", "evaluate"):
        texts[name] = subprocess.run(["git", "show", f"{rev}:zsclip/search/{name}.py"], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout
    texts["evaluate"] = texts["evaluate"].replace("from ._kernels import", "from ._baseline_kernels import")
    texts = {name: text.replace("cache=True", "cache=False") for name, text in texts.items()}  # no source file
    modules = {}
    for name in ("_kernels", "evaluate"):
        full = f"zsclip.search._baseline{name if name.startswith('_') else '_' + name}"
        spec = importlib.util.spec_from_loader(full, loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "zsclip.search"
        sys.modules[full] = module
        exec(compile(texts[name], f"<{rev}:zsclip/search/{name}.py>", "exec"), module.__dict__)
        modules[name] = module
    return modules["evaluate"]


class Clock:
    """Wall and process CPU seconds spent per method, accumulated over rounds."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = {}

    def run(self, name: str, fn, items, count: int | None = None) -> None:
        """Call ``fn`` on each item; ``count`` evaluations in all (default: one per item)."""
        w, c = time.perf_counter(), time.process_time()
        for item in items:
            fn(item)
        acc = self.spent.setdefault(name, [0.0, 0.0, 0])
        acc[0] += time.perf_counter() - w
        acc[1] += time.process_time() - c
        acc[2] += len(items) if count is None else count

    def rates(self, name: str) -> tuple[float, float]:
        wall, cpu, count = self.spent[name]
        return count / wall, count / cpu


#: fitness weights timed: ProAPO's (with and without R) and hill-climbing's top-1 only (no CE, no R)
FITNESSES = {"beta=0.05": {"r": 0.05}, "beta=0": {"r": 0.0},
             "top-1 only": {"top1": 1.0, "top5": 0.0, "r": 0.0, "ce": 0.0}}


def compare(title: str, evaluators: dict, names: list[str], workloads: dict, rounds: int,
            fitnesses=tuple(FITNESSES), naive=None, naive_sets=()) -> list[str]:
    """Time every evaluator on every workload, interleaved, and return report lines."""
    lines = []
    for fit in fitnesses:
        for ev in evaluators.values():
            ev.weights = type(ev.weights)(**FITNESSES[fit])  # the same caches, other fitness weights
        clock = Clock()
        for label, (sets, batches) in workloads.items():
            as_names = [[names[i] for i in s] for s in sets]
            batch_names = [[[names[i] for i in s] for s in b] for b in batches]
            for ev in evaluators.values():  # compile, warm
                ev.evaluate(as_names[0])
            for r in range(rounds):
                sl = slice(r * len(as_names) // rounds, (r + 1) * len(as_names) // rounds)
                bl = slice(r * len(batch_names) // rounds, (r + 1) * len(batch_names) // rounds)
                for key, ev in evaluators.items():
                    clock.run(f"{label}|{key} evaluate", ev.evaluate, as_names[sl])
                clock.run(f"{label}|zsclip evaluate_many", evaluators["zsclip"].evaluate_many, batch_names[bl],
                          sum(len(b) for b in batch_names[bl]))
        if naive is not None:
            weights = FitnessWeights(**FITNESSES[fit])
            clock.run("naive|naive", lambda s, w=weights: naive(s, w), naive_sets)
            naive_rate = clock.rates("naive|naive")
            lines.append(f"{title}, {fit}: naive (text tower per candidate): {naive_rate[0]:,.2f} evals/s "
                         f"wall, {naive_rate[1]:,.2f} per CPU-s")
        for name in clock.spent:
            if name.startswith("naive"):
                continue
            wall, cpu = clock.rates(name)
            label, method = name.split("|")
            line = f"{title}, {fit}, {label}: {method}: {wall:,.1f} evals/s wall, {cpu:,.1f} per CPU-s"
            base = f"{label}|previous evaluate"
            if base in clock.spent and not name.endswith("previous evaluate"):
                line += f"; x{wall / clock.rates(base)[0]:.2f} the previous (wall)"
            if naive is not None:
                line += f", x{wall / naive_rate[0]:,.0f} naive"
            lines.append(line)
    return lines


def imagenet(args, baseline) -> list[str]:
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
    blocks = np.stack([unit(classes + 0.3 * styles[t] + 0.2 * rng.standard_normal((c, d), dtype=np.float32))
                       for t in range(n_templates)])
    names = [str(t) for t in range(n_templates)]
    lines = []
    evaluators = {}
    for key, module in (("previous", baseline), ("zsclip", sys.modules["zsclip.search.evaluate"])):
        if module is None:
            continue
        w, cpu = time.perf_counter(), time.process_time()
        ev = module.TemplateSetEvaluator(features, labels, c, module.FitnessWeights(), 100.0)
        for t in range(n_templates):
            ev.add(names[t], blocks[t])
        ev.evaluate(names[:2])  # the new evaluator fills its Gram cache here
        lines.append(f"synthetic ImageNet: {key} one-off setup of 240 cached templates: "
                     f"{time.perf_counter() - w:.1f} s wall, {time.process_time() - cpu:.1f} CPU-s")
        evaluators[key] = ev
    encoder = encoder_for(get_dataset("toyworld"))
    class_names = [f"class number {i}" for i in range(c)]

    def naive(s: list[int], weights: FitnessWeights) -> float:
        encoder.encode_texts([f"template {i} of a {name}." for i in s for name in class_names])
        return naive_terms(features, labels, blocks[s].reshape(len(s) * c, d), len(s), weights)

    batches = proapo_epochs(n_templates, args.count, seed=1)
    plain = random_sets(n_templates, args.count)
    workloads = {"random sets of 1-8": (plain, in_batches(plain)),
                 "ProAPO epochs": ([s for b in batches for s in b], batches)}
    lines += compare("synthetic ImageNet (C=1000, N=1000, d=512, 240 templates)", evaluators, names, workloads,
                     args.rounds, naive=naive, naive_sets=random_sets(n_templates, args.naive, seed=2))
    lines += stage2(features, labels, classes, baseline, args)
    weights = FitnessWeights()
    evaluators["zsclip"].weights = weights
    gap = max(abs(evaluators["zsclip"].evaluate([names[i] for i in s]).fitness
                  - naive_terms(features, labels, blocks[s].reshape(len(s) * c, d), len(s), weights))
              for s in random_sets(n_templates, 8, seed=3))
    lines.append(f"synthetic ImageNet, beta=0.05: largest |fitness(zsclip) - fitness(naive, float64 R)|: {gap:.2e}")
    return lines


def stage2(features: np.ndarray, labels: np.ndarray, classes: np.ndarray, baseline, args) -> list[str]:
    """ProAPO stage-2 edits at ImageNet scale: 17 classes (int(2.5·ln 1000)) get 4 of their 12 items; only their
    cosines are recomputed (``ClassPromptEvaluator``), previous and this evaluator interleaved."""
    rng = np.random.default_rng(5)
    c, d = classes.shape
    items = [(rng.standard_normal((12, d)) / np.sqrt(d) + classes[k]).astype(np.float32) for k in range(c)]
    edits = []
    for _ in range(args.count // 2):
        group = rng.choice(c, size=17, replace=False)
        edits.append({int(k): sorted(rng.choice(12, size=4, replace=False).tolist()) for k in group})
    lines = []
    for beta in (0.05, 0.0):
        evs = {}
        for key, module in (("previous", baseline), ("zsclip", sys.modules["zsclip.search.evaluate"])):
            if module is not None:
                evs[key] = module.ClassPromptEvaluator(features, labels, items, module.FitnessWeights(r=beta), 100.0)
                evs[key].set_base([list(range(4)) for _ in range(c)])
                evs[key].evaluate(edits[0])
        clock = Clock()
        for r in range(args.rounds):
            part = edits[r * len(edits) // args.rounds:(r + 1) * len(edits) // args.rounds]
            for key, ev in evs.items():
                clock.run(key, ev.evaluate, part)
        for key in evs:
            wall, cpu = clock.rates(key)
            line = (f"synthetic ImageNet stage-2 edit of 17 classes, beta={beta:g}: {key} evaluate: "
                    f"{wall:,.1f} evals/s wall, {cpu:,.1f} per CPU-s")
            if key != "previous" and "previous" in evs:
                line += f"; x{wall / clock.rates('previous')[0]:.2f} the previous (wall)"
            lines.append(line)
    return lines


def toy_world(args, baseline) -> list[str]:
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
    w = time.perf_counter()
    blocks = template_blocks(library, ds.classnames, cache)
    lines = [f"toy world: text blocks of {len(library)} templates (text cache): {time.perf_counter() - w:.1f} s"]
    evaluators = {}
    for key, module in (("previous", baseline), ("zsclip", sys.modules["zsclip.search.evaluate"])):
        if module is None:
            continue
        w = time.perf_counter()
        ev = module.TemplateSetEvaluator(data.fit_features, data.fit_labels, len(ds.classnames),
                                         module.FitnessWeights(), enc.logit_scale)
        for t, b in blocks.items():
            ev.add(t, b)
        ev.evaluate(library[:2])
        lines.append(f"toy world: {key} one-off setup of {len(library)} cached templates: "
                     f"{time.perf_counter() - w:.2f} s")
        evaluators[key] = ev

    def naive(s: list[int], weights: FitnessWeights) -> float:
        texts = [format_template(library[i], c) for i in s for c in ds.classnames]
        emb = enc.encode_texts(texts)
        return naive_terms(data.fit_features, data.fit_labels, emb, len(s), weights, enc.logit_scale)

    n = len(library)
    batches = proapo_epochs(n, args.count, seed=1)
    plain = random_sets(n, args.count)
    workloads = {"random sets of 1-8": (plain, in_batches(plain)),
                 "ProAPO epochs": ([s for b in batches for s in b], batches)}
    lines += compare(f"toy world (C=100, N=100, d=64, library {n})", evaluators, library, workloads, args.rounds,
                     naive=naive, naive_sets=random_sets(n, args.naive, seed=2))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=480, help="candidates per workload and evaluator")
    parser.add_argument("--rounds", type=int, default=4, help="turns the evaluators take (interleaving)")
    parser.add_argument("--naive", type=int, default=3, help="candidate sets timed with the naive evaluation")
    parser.add_argument("--skip-toy", action="store_true", help="only the synthetic ImageNet setting")
    parser.add_argument("--baseline-rev", default=BASELINE_REV,
                        help="git revision of the previous evaluator ('' to leave it out)")
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: their choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline_rev) if args.baseline_rev else None
    print(f"torch threads: {torch.get_num_threads()}, numba threads: {numba.get_num_threads()}, "
          f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    lines = [] if args.skip_toy else toy_world(args, baseline)
    lines += imagenet(args, baseline)
    print("\n".join(lines))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
