"""The toy world's prompt-search rows (docs/search.md): hill-climbing feedback ablation and ProAPO, 3 seeds.

Per seed (the k-shot draw, the search and the LLM request seeds): hill-climbing from CLIP's 80 templates
without any sketch-style template (the toy world's images are sketches), with good + bad feedback, good only,
and no feedback, at equal LLM calls (the same iterations); ProAPO, both stages, with the oracle's synonyms
and the card's CuPL sentences. Choices are made on validation; test is read once per finished job. The LLM
is the toy world's oracle stand-in (``zsclip.world.template_oracle``), served in-process.

    python benchmarks/search_toyworld.py --seeds 1 2 3 --iterations 10 [--proapo]
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from zsclip.datasets import get_dataset
from zsclip.llm import LLMClient
from zsclip.pipeline import encoder_for
from zsclip.prompts import load_templates
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
from zsclip.world.oracle import serve

SKETCHY = ("sketch", "drawing", "doodle", "drawn", "pencil")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iterations", type=int, default=10)
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
    try:
        for seed in args.seeds:
            setup = prepare(ds, enc, shots=1, seed=seed)
            hand = ds.card["templates"]
            val = {t: validation_top1(setup, template_weights(setup, [t])) for t in hand}
            best_hand = max(hand, key=lambda t: val[t])
            rows.setdefault("best hand-written (val)", []).append(val[best_hand])
            rows.setdefault("a photo of a {}. (test)", []).append(
                test_report(setup, template_weights(setup, ["a photo of a {}."]))["top1"])
            rows.setdefault("best pool template alone (val)", []).append(
                max(validation_top1(setup, template_weights(setup, [t])) for t in pool))
            for feedback in ("good+bad", "good", "none"):
                with LLMClient("oracle", base_url=url, prices={}) as llm:
                    r = run_hillclimb(setup, pool, pool_source="openai-imagenet minus sketch-style", llm=llm,
                                      llm_model="oracle", iterations=args.iterations, feedback=feedback,
                                      domain="creature")
                rows.setdefault(f"hillclimb {feedback} (val)", []).append(r["validation"]["top1"])
                rows.setdefault(f"hillclimb {feedback} (test)", []).append(r["test"]["top1"])
                rows.setdefault(f"hillclimb {feedback} (LLM calls)", []).append(r["budget_spent"]["llm_calls"]
                                                                                + r["budget_spent"]["llm_cached"])
                rows.setdefault(f"hillclimb {feedback} chosen", []).append(r["chosen"][0])
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
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as fh:
        json.dump({"rows": rows, "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
