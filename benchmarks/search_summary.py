"""The prompt-search section of docs/toyworld.md: rows and a figure from the runs in docs/search_toyworld.json.

``benchmarks/search_toyworld.py`` runs the searches and records every seed's validation and test top-1
under a run name; this script only reads those records back (it runs nothing) and prints the Markdown
section that sits below the generated claims table in ``docs/toyworld.md`` (``zsclip world table --write``
keeps it), and draws validation top-1 against LLM calls per feedback mode, mean ± std over seeds, with the
best hand-written template and the best template of the initial pool as lines.

    python benchmarks/search_summary.py [--json docs/search_toyworld.json] [--plot docs/search_toyworld.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

#: the released protocol (1 shot, 3 finalists), stand-in v3, 20 seeds where run
BUDGET_RUNS = ("v3, 10 calls, seeds 1-20", "v3, 40 calls, seeds 1-20", "v3, 80 calls, seeds 1-10")
#: the variants that make the choice among finalists less noisy (same climbs or more shots)
VARIANT_RUNS = {"v3, 40 calls, 10 finalists, seeds 1-20": "40 calls, 10 finalists",
                "v3, 40 calls, 4 shots, seeds 1-20": "40 calls, 4 shots"}
PROAPO_RUN = "v1 (first version), 10 calls, with ProAPO"
MODES = (("good+bad", "good + bad"), ("good", "good only"), ("none", "no feedback"))


def _stat(values: list[float]) -> str:
    """Mean ± std (ddof = 0) of one row's per-seed numbers."""
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.1f} ± {a.std():.1f}"


def _cell(rows: dict[str, list[float]], mode: str) -> str:
    return f"{_stat(rows[f'hillclimb {mode} (val)'])} ({_stat(rows[f'hillclimb {mode} (test)'])})"


def section(runs: dict[str, Any]) -> str:
    """The Markdown section: the hill-climbing feedback ablation per budget and variant, then ProAPO."""
    lines = ["| hill-climbing run | seeds | LLM calls | " + " | ".join(label for _, label in MODES) + " |",
             "|---|---:|---:|" + "---:|" * len(MODES)]
    for name in BUDGET_RUNS:
        rows = runs[name]["rows"]
        calls = np.mean([np.mean(rows[f"hillclimb {m} (LLM calls)"]) for m, _ in MODES])
        lines.append(f"| released protocol (1 shot, 3 finalists), {runs[name]['iterations']} calls | "
                     f"{len(runs[name]['seeds'])} | {calls:.1f} | " + " | ".join(_cell(rows, m) for m, _ in MODES)
                     + " |")
    for name, label in VARIANT_RUNS.items():
        rows = runs[name]["rows"]
        calls = np.mean([np.mean(rows[f"hillclimb {m} (LLM calls)"]) for m, _ in MODES])
        lines.append(f"| {label} | {len(runs[name]['seeds'])} | {calls:.1f} | "
                     + " | ".join(_cell(rows, m) for m, _ in MODES) + " |")
    base = runs[BUDGET_RUNS[1]]["rows"]
    proapo = runs[PROAPO_RUN]["rows"]
    n_proapo = len(proapo["ProAPO both stages (test)"])
    return "\n".join([
        "## Prompt search (`zsclip search hillclimb`, `zsclip search proapo`)",
        "",
        "Validation top-1 % (test in brackets), mean ± std over seeds (the k-shot draw, the search and the LLM "
        "request seeds; np.std, ddof = 0), with the toy world's template stand-in (v3, `zsclip.world."
        "template_oracle`). Hill-climbing starts from CLIP's 80 templates without any sketch-style template; "
        "each column is one feedback mode at equal LLM calls. Fitness is measured on the fitting shots, "
        "finalists are chosen on validation, and test is read once per finished job (the candidate logs hold "
        "no test number). Runs: `benchmarks/search_toyworld.py`; numbers: `docs/search_toyworld.json`; "
        "analysis: `docs/search.md`. This section is written by `python benchmarks/search_summary.py`.",
        "",
        *lines,
        "",
        f"Baselines: best hand-written template of the card (\"a sketch of a {{}}.\") "
        f"{_stat(base['best hand-written (val)']).split(' ±')[0]} val; best single template of the initial pool "
        f"{_stat(base['best pool template alone (val)']).split(' ±')[0]} val; \"a photo of a {{}}.\" "
        f"{_stat(base['a photo of a {}. (test)']).split(' ±')[0]} test.",
        "",
        f"ProAPO ({n_proapo} seeds, both stages, oracle synonyms and the card's CuPL sentences): stage 1 "
        f"{_stat(proapo['ProAPO stage 1 (test)'])} test; both stages {_stat(proapo['ProAPO both stages (val)'])} "
        f"val, {_stat(proapo['ProAPO both stages (test)'])} test — above the template ensemble (62.1) and CbD "
        "(63.5) on test (table above).",
        "",
        *findings(runs),
        "",
        "![validation top-1 against LLM calls per feedback mode](search_toyworld.png)",
    ])


def findings(runs: dict[str, Any]) -> list[str]:
    """What the rows show, computed from them: the 1-point claim per run and the paired good + bad − good only."""
    out = []
    for name, label in [*((n, f"{runs[n]['iterations']} calls") for n in BUDGET_RUNS), *VARIANT_RUNS.items()]:
        rows = runs[name]["rows"]
        best = float(np.mean(rows["best hand-written (val)"]))
        means = {m: float(np.mean(rows[f"hillclimb {m} (val)"])) for m, _ in MODES}
        close = [lab for m, lab in MODES if means[m] >= best - 1.0]
        diff = np.asarray(rows["hillclimb good+bad (val)"]) - np.asarray(rows["hillclimb good (val)"])
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        photo = float(np.mean(rows["a photo of a {}. (test)"]))
        beats = all(min(rows[f"hillclimb {m} (test)"]) > photo for m, _ in MODES)
        out.append(f"- {label}: within 1 point of the best hand-written template on val: "
                   f"{', '.join(close) if close else 'no mode'}; good + bad − good only, paired per seed: "
                   f"{diff.mean():+.1f} ± {se:.1f} (standard error; {int((diff > 0).sum())} higher, "
                   f"{int((diff == 0).sum())} equal, {int((diff < 0).sum())} lower); every climb above "
                   f"\"a photo of a {{}}.\" on test: {'yes' if beats else 'no'}.")
    return out


def plot(runs: dict[str, Any], path: Path) -> None:
    """Validation top-1 against LLM calls per mode (mean ± std), with the hand-written and pool baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for (mode, label), marker, shift in zip(MODES, "osd", (-0.8, 0.0, 0.8), strict=True):
        xs, means, stds = [], [], []
        for name in BUDGET_RUNS:
            rows = runs[name]["rows"]
            xs.append(np.mean(rows[f"hillclimb {mode} (LLM calls)"]) + shift)
            vals = np.asarray(rows[f"hillclimb {mode} (val)"], dtype=float)
            means.append(vals.mean())
            stds.append(vals.std())
        ax.errorbar(xs, means, yerr=stds, marker=marker, capsize=3, label=label)
    base = runs[BUDGET_RUNS[1]]["rows"]
    best = float(np.mean(base["best hand-written (val)"]))
    ax.axhline(best, color="k", ls="--", lw=1, label=f"best hand-written template ({best:.1f})")
    ax.axhspan(best - 1, best, color="k", alpha=0.08, label="within 1 point of it")
    pool = float(np.mean(base["best pool template alone (val)"]))
    ax.axhline(pool, color="grey", ls=":", lw=1, label=f"best initial-pool template ({pool:.1f})")
    ax.set_xlabel("LLM calls per climb (re-asks included)")
    ax.set_ylabel("validation top-1 %")
    ax.set_title("Hill-climbing on the toy world (released protocol, mean ± std over seeds)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("docs/search_toyworld.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/search_toyworld.png"))
    args = parser.parse_args()
    runs = json.loads(args.json.read_text())
    print(section(runs))
    plot(runs, args.plot)


if __name__ == "__main__":
    main()
