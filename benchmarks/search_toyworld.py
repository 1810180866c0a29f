"""The toy world's prompt-search rows (docs/search.md): hill-climbing feedback ablation and ProAPO, per seed.

Per seed (the k-shot draw, the search and the LLM request seeds): hill-climbing from CLIP's 80 templates
without any sketch-style template (the toy world's images are sketches), with good + bad feedback, good only,
and no feedback, at equal LLM calls (the same iterations); ProAPO, both stages, with the oracle's synonyms
and the card's CuPL sentences. Choices are made on validation; test is read once per finished job. The LLM
is the toy world's oracle stand-in (``zsclip.world.template_oracle``), served in-process.

Besides the rows, each climb's candidate log is read back (never test) into proposal statistics: how many
iterations added nothing (a repeat, or 15 invalid replies), how many new templates carry a word that the
good + bad request of that iteration tells the stand-in to avoid, the first iteration that proposed a
sketch-style template, and whether one was among the finalists. ``--probe N`` asks the stand-in N times
with the first request of each mode (the initial pool's ranking; the same for every mode) and scores the
answers on the fitting shots: it measures what the bad list changes in the stand-in's proposals, free of the
noise of a climb's path.

    python benchmarks/search_toyworld.py --seeds 1 2 3 --iterations 10 [--shots 1] [--finalists 3] [--probe N]
    python benchmarks/search_toyworld.py --seeds 1 2 3 --proapo
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsclip.datasets import get_dataset
from zsclip.llm import LLMClient
from zsclip.pipeline import encoder_for
from zsclip.prompts import load_templates
from zsclip.search.evaluate import FitnessWeights, TemplateSetEvaluator
from zsclip.search.hillclimb import FEEDBACK_MODES, HillClimb, parse_templates
from zsclip.search.job import new_rng_state
from zsclip.search.proapo import template_library
from zsclip.search.runner import (
    prepare,
    read_synonyms,
    run_hillclimb,
    run_proapo,
    template_weights,
    test_report,
    validation_top1,
)
from zsclip.world.oracle import DEFAULT_WRONG_RATE, serve
from zsclip.world.template_oracle import read_request, template_reply, words_to_avoid

SKETCHY = ("sketch", "drawing", "doodle", "drawn", "pencil")
#: templates of the medium the toy world's images have (what a climb from the pool has to discover)
SKETCH_STYLE = ("sketch", "drawing")


def _sketchy(template: str) -> bool:
    return any(w in template for w in SKETCH_STYLE) and "black and white" not in template and "cartoon" not in template


def _banned(template: str, avoid: set[str]) -> bool:
    from zsclip.world.template_oracle import _words

    return bool(_words(template) & avoid)


def _ranked(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: -e["fitness"])  # stable, as HillClimb.ranked


def climb_stats(entries: Sequence[dict[str, Any]], iterations: int, k: int, finalists: int,
                target: str) -> dict[str, Any]:
    """Proposal statistics of one finished climb from its entries (the job's state; fitting numbers only);
    ``target`` is the best hand-written template (chosen on validation), to see when the climb first wrote it.

    The good + bad lists of each iteration are replayed from the entries scored before it, so a good-only or
    no-feedback climb is judged by what a good + bad request would have told the stand-in to avoid then.
    """
    pool = [e for e in entries if e["climb"] == -1]
    climb = [e for e in entries if e["climb"] == 0]
    by_iteration = {e["iteration"]: e for e in climb}
    banned = 0
    for e in climb:
        ranked = _ranked(pool + [c for c in climb if c["iteration"] < e["iteration"]])
        good = [r["template"] for r in ranked[:k]]
        bad = [r["template"] for r in reversed(ranked[-k:])]
        banned += _banned(e["template"], words_to_avoid(good, bad))
    sketch_at = [i for i in range(iterations) if i in by_iteration and _sketchy(by_iteration[i]["template"])]
    best_pool = max(e["fitness"] for e in pool)
    target_at = [e["iteration"] for e in climb if e["template"] == target]
    return {"new templates": len(climb), "iterations adding nothing": iterations - len(climb),
            "new with a word good+bad avoids": banned,
            "new above the pool's best (fitting)": sum(e["fitness"] > best_pool for e in climb),
            "first sketch-style iteration": sketch_at[0] if sketch_at else None,
            "first iteration writing the best hand-written template": target_at[0] if target_at else None,
            "sketch-style among finalists": any(_sketchy(r["template"]) for r in _ranked(entries)[:finalists])}


def probe(setup: Any, pool: Sequence[str], n: int, domain: str) -> dict[str, dict[str, Any]]:
    """Ask the stand-in ``n`` times with each mode's first request (the pool's ranking) and score the answers.

    Per mode: the share of replies a parser rejects, and of the templates of valid replies the share that
    repeat a pool template (a wasted call in a climb), carry a word the good + bad request avoids, are
    sketch-style, and beat the pool's best fitting fitness; the mean fitting fitness of the new ones.
    """
    ev = TemplateSetEvaluator(setup.data.fit_features, setup.data.fit_labels, len(setup.dataset.classnames),
                              FitnessWeights(1.0, 0.0, 0.0, 0.0), setup.logit_scale)

    def fitness(templates: Sequence[str]) -> list[float]:
        missing = [t for t in dict.fromkeys(templates) if t not in ev]
        if missing:
            for t, block in setup.blocks_for(missing).items():
                ev.add(t, block)
        return [ev.evaluate([t]).fitness for t in templates]

    entries = [{"template": t, "climb": -1, "iteration": -1, "fitness": f} for t, f in zip(pool, fitness(pool))]
    best = max(e["fitness"] for e in entries)
    ranked = _ranked(entries)
    avoid = words_to_avoid([e["template"] for e in ranked[:3]], [e["template"] for e in reversed(ranked[-3:])])
    out: dict[str, dict[str, Any]] = {}
    for mode in FEEDBACK_MODES:
        search = HillClimb(pool, ev, setup.blocks_for, domain=domain, feedback=mode, seed=setup.seed)
        state = {"entries": entries, "climb": 0, "iteration": 0, "rng": new_rng_state(setup.seed)}
        prompt = search.build_prompt(state)
        invalid, proposals = 0, []
        for i in range(n):
            try:
                proposals += parse_templates(template_reply(prompt, random.Random(f"probe:{setup.seed}:{i}"),
                                                            invalid_rate=DEFAULT_WRONG_RATE))
            except ValueError:
                invalid += 1
        new = [t for t in proposals if t not in pool]
        fit = fitness(new)
        m = max(len(proposals), 1)
        good, bad, _ = read_request(prompt)
        out[mode] = {"shown good": good, "shown bad": bad, "replies": n, "invalid replies": invalid / n,
                     "repeats a pool template": 1 - len(new) / m,
                     "with a word good+bad avoids": sum(_banned(t, avoid) for t in proposals) / m,
                     "sketch-style": sum(_sketchy(t) for t in proposals) / m,
                     "beats the pool's best (fitting)": sum(f > best for f in fit) / m,
                     "mean fitness of new (fitting)": float(np.mean(fit)) if fit else None,
                     "most frequent": Counter(proposals).most_common(5)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=list(FEEDBACK_MODES), choices=FEEDBACK_MODES)
    parser.add_argument("--shots", type=int, default=1, help="fitting images per class (released default 1)")
    parser.add_argument("--finalists", type=int, default=3, help="best-by-fitness templates chosen among on val")
    parser.add_argument("--probe", type=int, default=0, help="stand-in replies per mode for the probe (0: none)")
    parser.add_argument("--proapo", action="store_true")
    parser.add_argument("--out", default="search_toyworld.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds = get_dataset("toyworld")
    enc = encoder_for(ds)
    pool = [t for t in load_templates("openai-imagenet") if not any(w in t for w in SKETCHY)]
    server = serve(port=0)
    url = server.url
    rows: dict[str, list] = {}
    stats: dict[str, list] = {}
    probes: dict[str, Any] = {}
    try:
        for seed in args.seeds:
            setup = prepare(ds, enc, shots=args.shots, seed=seed)
            hand = ds.card["templates"]
            val = {t: validation_top1(setup, template_weights(setup, [t])) for t in hand}
            best_hand = max(hand, key=lambda t: val[t])
            rows.setdefault("best hand-written (val)", []).append(val[best_hand])
            rows.setdefault("best hand-written template", []).append(best_hand)
            rows.setdefault("a photo of a {}. (test)", []).append(
                test_report(setup, template_weights(setup, ["a photo of a {}."]))["top1"])
            rows.setdefault("best pool template alone (val)", []).append(
                max(validation_top1(setup, template_weights(setup, [t])) for t in pool))
            for feedback in args.modes:
                with LLMClient("oracle", base_url=url, prices={}) as llm:
                    r = run_hillclimb(setup, pool, pool_source="openai-imagenet minus sketch-style", llm=llm,
                                      llm_model="oracle", iterations=args.iterations, feedback=feedback,
                                      finalists=args.finalists, domain="creature")
                rows.setdefault(f"hillclimb {feedback} (val)", []).append(r["validation"]["top1"])
                rows.setdefault(f"hillclimb {feedback} (test)", []).append(r["test"]["top1"])
                rows.setdefault(f"hillclimb {feedback} (LLM calls)", []).append(r["budget_spent"]["llm_calls"]
                                                                                + r["budget_spent"]["llm_cached"])
                rows.setdefault(f"hillclimb {feedback} chosen", []).append(r["chosen"][0])
                state = json.loads((Path(r["outputs"]["file"]).parent / "state.json").read_text())
                stats.setdefault(feedback, []).append(
                    climb_stats(state["algo"]["entries"], args.iterations, 3, args.finalists, best_hand))
            if args.probe:
                probes[str(seed)] = probe(setup, pool, args.probe, "creature")
            if args.proapo:
                syn = read_synonyms("prompts/toyworld/synonyms_oracle.json", ds.classnames)
                from zsclip.prompts import match_descriptors, read_descriptor_file

                descs = match_descriptors(read_descriptor_file("prompts/toyworld/descriptors_cupl_oracle.json"),
                                          ds.classnames)
                r = run_proapo(setup, template_library(ds.card["type_words"]), library_source="library",
                               synonyms=syn, synonyms_source="prompts/toyworld/synonyms_oracle.json",
                               descriptions=descs, descriptions_source="prompts/toyworld/descriptors_cupl_oracle.json",
                               domain="creature")
                rows.setdefault("ProAPO stage 1 (test)", []).append(r["test_stage1"]["top1"])
                rows.setdefault("ProAPO both stages (val)", []).append(r["validation"]["top1"])
                rows.setdefault("ProAPO both stages (test)", []).append(r["test"]["top1"])
            print(json.dumps({k: v for k, v in rows.items()}, indent=1), flush=True)
    finally:
        server.stop()
    summary = {k: (f"{np.mean(v):.1f} ± {np.std(v):.1f}" if isinstance(v[0], float | int) else v)
               for k, v in rows.items()}
    stat_summary = {mode: {key: (sum(s[key] for s in runs) if not key.startswith("first")
                                 else [s[key] for s in runs]) for key in runs[0]} for mode, runs in stats.items()}
    print(json.dumps({"summary": summary, "proposals (sums over seeds)": stat_summary}, indent=1))
    out = {"seeds": args.seeds, "iterations": args.iterations, "modes": args.modes, "shots": args.shots,
           "finalists": args.finalists, "rows": rows, "summary": summary, "proposals": stats,
           "proposals (sums over seeds)": stat_summary}
    if probes:
        out["probe"] = probes
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
