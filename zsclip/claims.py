"""The toy world's table of method claims: top-1 per corpus-frequency tier, with the world's ceilings.

Randomised rows (WaffleCLIP) give mean ± std over their seeds; the other rows are deterministic for a given
model and test split.

Each row is one registered method, with its parameters, run through the ordinary ``zsclip.classify`` pipeline
on the ``toyworld``
test split; columns split the test images by their species' tier (head species named often in the corpus,
tail species named rarely, never-named species, ...). Two reference rows bound the table: a linear probe on
the image embeddings trained with all training labels (the ceiling of what the image tower separates) and
chance. ``zsclip world table`` prints and writes it. (It lives outside ``zsclip.world`` because it runs the
pipeline; nothing under ``zsclip.world`` imports the pipeline.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .context import RunContext
from .datasets import get_dataset
from .errors import ZsclipError
from .heads import train_linear_probe
from .methods import jsonable_params, make_method
from .models import load_model
from .paths import cache_root
from .pipeline import classify
from .records import Record
from .scoring import mean_std

log = logging.getLogger(__name__)

#: tier columns, in the order shown, and their headings
TIER_COLUMNS = (("head", "head"), ("mid", "mid"), ("nickname", "nickname"), ("tail", "tail"),
                ("never", "never-named"))


@dataclass(frozen=True)
class Row:
    """One method of the table: a label, a registered method name and its parameters."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


#: the REAL-Linear rows' ``corpus`` parameter: the toy world's corpus export, found at run time by
#: ``toyworld_corpus`` ($ZSCLIP_TOYWORLD_CORPUS, else <cache root>/toyworld-corpus)
REAL_CORPUS = "<toyworld corpus export>"


def toyworld_corpus() -> str:
    """Where the REAL-Linear rows read the toy world's exported corpus; a clear error when it is not there."""
    path = Path(os.environ.get("ZSCLIP_TOYWORLD_CORPUS") or cache_root() / "toyworld-corpus").expanduser()
    if not (path / "metadata").is_dir():
        raise ZsclipError(f"the REAL-Linear rows need the toy world's corpus in the clip-retrieval layout at {path}: "
                          f"make it with `zsclip world corpus --out {path}` (about 10 min on 2 cores), or point "
                          "ZSCLIP_TOYWORLD_CORPUS at an export")
    return str(path)

DEFAULT_ROWS = (
    Row('class names, "a photo of a {}."', "classnames", {"templates": "simple"}),
    Row('class names, "a sketch of a {}." (the test style)', "classnames", {"templates": "a sketch of a {}."}),
    Row("class names, template ensemble", "classnames", {"templates": "ensemble"}),
    Row("descriptions (CbD)", "descriptions", {}),
    Row("descriptions (CbD), ground-truth attributes", "descriptions", {"descriptors": "attributes"}),
    Row('DDS, classname-free, "a photo of a {}." (k=3, m=5, w chosen on val)', "dds", {}),
    Row("DDS, classname-free, template ensemble (k=3, m=5, w chosen on val)", "dds", {"template": "ensemble"}),
    Row("DDS, with class name, template ensemble neighbourhood (k=3, m=5, mean)", "dds",
        {"template": "ensemble", "form": "classname"}),
    Row("CuPL sentences (oracle LLM stand-in), renormalised mean", "cupl", {}),
    Row("random descriptors (WaffleCLIP), 7 seeds", "waffle", {}),
    Row("REAL-Prompt (most frequent caption name, template ensemble)", "real-prompt", {}),
    Row("REAL-Prompt, official name kept beside the chosen name (keep_official, chosen on val)", "real-prompt",
        {"keep_official": True}),
    Row("REAL-Linear, string-match retrieval, the authors' recipe (n=500, WiSE-FT 0.5)", "real-linear",
        {"corpus": REAL_CORPUS, "retrieval": "string"}),
    Row("REAL-Linear, string-match, genus-word names dropped, kNN top-up to 150 images, WiSE-FT 0.7 (chosen on val)",
        "real-linear", {"corpus": REAL_CORPUS, "retrieval": "string", "subset_names": "drop", "min_images": 150,
                        "alpha": 0.7}),
    Row("REAL-Linear, kNN image retrieval, class-balanced (n=500, WiSE-FT 0.5)", "real-linear",
        {"corpus": REAL_CORPUS, "retrieval": "knn", "balance": "class"}),
    Row("random + about 1/2 real descriptors (WaffleCLIP mixed), 7 seeds", "waffle", {"mixed": True}),
)


def _tier_accuracy(correct: np.ndarray, labels: np.ndarray, tiers: Sequence[str]) -> dict[str, float]:
    """Top-1 (percent) over the images of each tier, plus ``all``."""
    tier_of_image = np.asarray(tiers)[labels]
    out = {t: float(100 * correct[tier_of_image == t].mean()) for t, _ in TIER_COLUMNS if (tier_of_image == t).any()}
    out["all"] = float(100 * correct.mean())
    return out


def claims_table(model: str = "toyworld", rows: Sequence[Row] = DEFAULT_ROWS, split: str = "test",
                 device: str = "auto") -> Record:
    """Run every row on the toy world; the record's ``results`` hold ``rows`` (label, method, params, seeds, fit
    info, ``top1`` per tier), the probe and chance ``ceilings`` and the ``tiers``' species counts."""
    ds = get_dataset("toyworld")
    tiers = [s.tier for s in ds.world.species]
    encoder = load_model(model, None, device=device)
    results = []
    for row in rows:
        params = {k: (toyworld_corpus() if v == REAL_CORPUS else v) for k, v in row.params.items()}
        run = classify(ds, make_method(row.method, **params), split=split, model=encoder)
        per_seed = [_tier_accuracy(sc.argmax(axis=1) == run.labels, run.labels, tiers) for sc in run.seed_scores]
        if len(per_seed) == 1:
            top1: dict[str, Any] = per_seed[0]
        else:  # randomised method: [mean, std] over seeds (np.std, ddof = 0)
            top1 = {t: list(mean_std([p[t] for p in per_seed])) for t in per_seed[0]}
        shown = {k: (REAL_CORPUS if row.params.get(k) == REAL_CORPUS else v)  # no machine path in the record
                 for k, v in jsonable_params(run.record.method["params"]).items()}
        results.append({"label": row.label, "method": row.method, "params": shown, "seeds": run.record.method["seeds"],
                        "fit_info": run.record.fit_info, "top1": top1})
        log.info("%s: %s", row.label, top1["all"])
    ctx = RunContext(ds, encoder, eval_split=split)
    train = ctx.features("fit")
    with ctx.evaluating():
        test = ctx.features("eval")
    probe = train_linear_probe(train.embeddings, train.labels, ds.classnames)
    correct = probe.predict(test.embeddings) == test.labels
    probe_row = _tier_accuracy(correct, np.asarray(test.labels), tiers)
    chance = 100.0 / len(ds.classnames)
    return Record(
        kind="claims",
        dataset={"name": "toyworld", "root": None, "split": split, "split_fingerprint": ds.split_fingerprint(split)},
        model={"name": model, "pretrained": None, "fingerprint": encoder.fingerprint},
        method={"name": "claims-table", "params": {"rows": [r.label for r in rows]}, "seeds": None},
        run=ctx.describe(),
        results={
            "tiers": {t: tiers.count(t) for t, _ in TIER_COLUMNS},
            "rows": results,
            "ceilings": [
                {"label": "linear probe on image embeddings (all training labels)", "top1": probe_row},
                {"label": "chance", "top1": {**{t: chance for t, _ in TIER_COLUMNS}, "all": chance}},
            ],
        },
    )


#: in a file written by ``zsclip world table --write``, this line and all below it survive a rewrite of the table
KEPT_MARKER = "<!-- end of the generated table: what follows is kept by `zsclip world table --write` -->"


def keep_sections(text: str, old: str) -> str:
    """``text`` (a newly generated table document) followed by what ``old`` has from :data:`KEPT_MARKER` on.

    Sections that other scripts write below the table (the prompt-search rows of
    ``benchmarks/search_summary.py``) are thereby kept when the table is regenerated.
    """
    if KEPT_MARKER not in old:
        return text
    return text.rstrip("\n") + "\n\n" + old[old.index(KEPT_MARKER):]


def to_markdown(record: Record) -> str:
    """The table as Markdown: one row per method and ceiling, one column per tier (species count in brackets)."""
    table = record.results
    heads = [f"{name} ({table['tiers'][t]})" for t, name in TIER_COLUMNS] + ["all"]
    lines = ["| top-1 % | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for row in [*table["rows"], *table["ceilings"]]:
        vals = [row["top1"].get(t) for t, _ in TIER_COLUMNS] + [row["top1"]["all"]]
        cells = ["" if v is None else (f"{v[0]:.1f} ± {v[1]:.1f}" if isinstance(v, list) else f"{v:.1f}")
                 for v in vals]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
