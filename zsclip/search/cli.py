"""``zsclip search``: offline prompt-search jobs (LLM hill-climbing, ProAPO) and their status.

Each command opens (or resumes) a job folder, runs the search with a progress bar on stderr, writes the
result as a file ``zsclip classify`` reads and prints where it is. Running a stopped or killed command again
resumes it; a budget stop exits with code 3 and says how to continue.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..cli_common import DatasetOpt, ModelOpt, PretrainedOpt, RootOpt, err, out
from ..errors import ZsclipError
from .job import Budget, BudgetReached

app = typer.Typer(no_args_is_help=True, help="Offline prompt searches: hill-climbing and ProAPO, resumable.")

ShotsOpt = Annotated[int, typer.Option("--shots", help="Training images per class the fitness is measured on.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the k-shot draw, the search and the LLM requests.")]
JobDirOpt = Annotated[Path | None, typer.Option(
    "--job-dir", help="Job folder (default: $ZSCLIP_HOME/jobs/<kind>-<fingerprint>); running again resumes it.")]
MaxEvalsOpt = Annotated[int | None, typer.Option("--max-evals", help="Stop before more fitness evaluations than this.")]
MaxCallsOpt = Annotated[int | None, typer.Option("--max-calls", help="Stop before more LLM calls than this.")]
MaxCostOpt = Annotated[float | None, typer.Option(
    "--max-cost", help="Stop before the estimated LLM cost passes this (USD).")]
LLMOpt = Annotated[str | None, typer.Option("--llm", help="LLM model name (default: $ZSCLIP_LLM_MODEL).")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="Chat-completions server, usually ending in /v1.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Result file (default: in the job folder).")]
NoTestOpt = Annotated[bool, typer.Option("--no-test", help="Do not evaluate the result on test after the search.")]
FitnessOpt = Annotated[str | None, typer.Option(
    "--fitness", help="proapo (w1=w5=0.1, beta=0.05, gamma=10), blackbox (top-1 only) or top1=W,top5=W,r=W,ce=W.")]


def _run(fn) -> Any:
    try:
        return fn()
    except BudgetReached as exc:
        err.print(f"[bold yellow]stopped:[/] {exc}", highlight=False)
        raise typer.Exit(3) from None
    except ZsclipError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted: the job's last finished step is saved; run the same command again to resume")
        raise typer.Exit(130) from None


def _setup(dataset: str, root: Path | None, model: str | None, pretrained: str | None, shots: int, seed: int):
    from ..datasets import get_dataset
    from ..pipeline import encoder_for
    from .runner import prepare

    ds = get_dataset(dataset, root)
    return prepare(ds, encoder_for(ds, model, pretrained), shots, seed)


def _llm(llm: str | None, base_url: str | None, required: bool):
    import os

    from ..llm import ENV_MODEL, LLMClient

    if not (llm or os.environ.get(ENV_MODEL)):
        if required:
            raise ZsclipError("this search needs an LLM: pass --llm MODEL (and --base-url URL), or set "
                              f"{ENV_MODEL}; offline: `zsclip world llm-serve` and --llm oracle")
        return None
    return LLMClient(llm, base_url=base_url)


def classify_command(dataset: str, path: str) -> str:
    """The ``zsclip classify`` command that uses a search output: a template file with the class-name method,
    a per-class prompt file (JSON) with CuPL's method (the renormalised mean of each class's sentences)."""
    if path.endswith(".json"):
        return f"zsclip classify -d {dataset} -m cupl -p sentences={path}"
    return f"zsclip classify -d {dataset} -m classnames -p templates={path}"


def _print_result(result: dict[str, Any], dataset: str) -> None:
    for outputs in [result["outputs"], *result.get("more_outputs", [])]:
        for name, path in outputs.items():
            out.print(f"{name}: {path}", highlight=False)
        out.print(f"use it: {classify_command(dataset, outputs['file'])}", highlight=False)
    out.print(f"validation top-1: {result['validation']['top1']:.2f}", highlight=False)
    if "test" in result:
        out.print(f"test top-1 (evaluated once, after the search): {result['test']['top1']:.2f}", highlight=False)
    spent = result["budget_spent"]
    out.print(f"spent: {spent['evaluations']:,} evaluations, {spent['llm_calls']} LLM calls "
              f"({spent['llm_cached']} cached), est. ${spent['llm_cost_usd']:.4f}", highlight=False)


@app.command("hillclimb")
def hillclimb(
    dataset: DatasetOpt = "toyworld",
    dataset_root: RootOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    templates: Annotated[str, typer.Option(
        "--templates", help="Initial pool: openai-imagenet (CLIP's 80), ensemble (the dataset card's), a file, ...")
    ] = "openai-imagenet",
    llm: LLMOpt = None,
    base_url: BaseUrlOpt = None,
    k: Annotated[int, typer.Option("--k", help="Good and bad templates shown per call.")] = 3,
    per_call: Annotated[int, typer.Option("--per-call", help="Templates asked for per call.")] = 1,
    iterations: Annotated[int, typer.Option("--iterations", help="LLM calls (iterations) per climb.")] = 10,
    restarts: Annotated[int, typer.Option("--restarts", help="Extra independent climbs from the initial pool.")] = 0,
    feedback: Annotated[str, typer.Option("--feedback", help="good+bad, good, or none (the ablation).")] = "good+bad",
    show_scores: Annotated[bool, typer.Option("--show-scores", help="Show fitness scores in the meta-prompt.")] = False,
    finalists: Annotated[int, typer.Option("--finalists", help="Best templates compared on validation.")] = 3,
    fitness: FitnessOpt = None,
    meta_prompt: Annotated[Path | None, typer.Option("--meta-prompt", help="Meta-prompt file (default: "
                                                     "prompts/meta/hillclimb.txt).")] = None,
    shots: ShotsOpt = 1,
    seed: SeedOpt = 1,
    job_dir: JobDirOpt = None,
    max_evals: MaxEvalsOpt = None,
    max_calls: MaxCallsOpt = None,
    max_cost: MaxCostOpt = None,
    output: OutputOpt = None,
    no_test: NoTestOpt = False,
) -> None:
    """LLM hill-climbing over prompt templates (Liu, Lin et al. 2024), as the authors' released code by default."""
    from ..generate_cli import dataset_domain
    from ..prompts import load_templates
    from .evaluate import FitnessWeights
    from .runner import run_hillclimb

    def go() -> dict[str, Any]:
        budget = Budget(max_evals, max_calls, max_cost)
        client = _llm(llm, base_url, required=True)
        setup = _setup(dataset, dataset_root, model, pretrained, shots, seed)
        pool = [t.replace("{c}", "{}") for t in load_templates(templates, setup.dataset.card)]
        weights = FitnessWeights.parse(fitness) if fitness else FitnessWeights(1.0, 0.0, 0.0, 0.0)
        return run_hillclimb(setup, pool, pool_source=templates, llm=client, llm_model=client.model, k=k,
                             per_call=per_call, iterations=iterations, restarts=restarts, feedback=feedback,
                             show_scores=show_scores, finalists=finalists, fitness=weights, meta_prompt=meta_prompt,
                             domain=dataset_domain(setup.dataset), job_dir=job_dir, budget=budget, output=output,
                             evaluate_test=not no_test)

    result = _run(go)
    out.print(f"chosen template: {result['chosen'][0]}", highlight=False)
    _print_result(result, dataset)


@app.command("proapo")
def proapo(
    dataset: DatasetOpt = "toyworld",
    dataset_root: RootOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    templates: Annotated[str, typer.Option(
        "--templates", help="Stage-1 library: 'library' (CLIP's 80 lowercased × the card's type_words) or a "
        "template spec / file.")] = "library",
    type_words: Annotated[str | None, typer.Option(
        "--type-words", help="Comma-separated type words (default: the dataset card's type_words).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Stage-1 epochs.")] = 8,
    max_prompts: Annotated[int | None, typer.Option("--max-prompts", help="Keep only the best N templates after "
                                                    "screening.")] = None,
    stage2: Annotated[bool, typer.Option("--stage2/--no-stage2", help="Run stage 2 (per-class prompts).")] = True,
    synonyms: Annotated[Path | None, typer.Option(
        "--synonyms", help="Synonym file (REAL format or {class: [synonym]}); default: asked of --llm once, "
        "else class names only.")] = None,
    descriptions: Annotated[str, typer.Option(
        "--descriptions", help="CuPL-style description file, 'card' (the dataset card's cupl file) or 'none'.")
    ] = "card",
    descriptions_per_class: Annotated[int, typer.Option("--descriptions-per-class",
                                                        help="First N descriptions of each class.")] = 5,
    fitness: FitnessOpt = None,
    llm: LLMOpt = None,
    base_url: BaseUrlOpt = None,
    shots: ShotsOpt = 1,
    seed: SeedOpt = 1,
    job_dir: JobDirOpt = None,
    max_evals: MaxEvalsOpt = None,
    max_calls: MaxCallsOpt = None,
    max_cost: MaxCostOpt = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Folder of the result files "
                                                    "(default: the job folder).")] = None,
    no_test: NoTestOpt = False,
) -> None:
    """ProAPO (Qu et al. 2025): evolutionary template-set search, then per-class prompt search."""
    from ..generate_cli import dataset_domain
    from ..paths import display_path, locate, resource_dir
    from ..prompts import load_templates, match_descriptors, read_descriptor_file
    from .evaluate import FitnessWeights
    from .proapo import template_library
    from .runner import read_synonyms, run_proapo

    def go() -> dict[str, Any]:
        budget = Budget(max_evals, max_calls, max_cost)
        setup = _setup(dataset, dataset_root, model, pretrained, shots, seed)
        ds = setup.dataset
        words = [w.strip() for w in type_words.split(",") if w.strip()] if type_words else \
            list(ds.card.get("type_words") or ds.card.get("domain_words") or [])
        if templates == "library":
            library, source = template_library(words), f"library({','.join(words)})"
        else:
            library, source = [t.replace("{c}", "{}") for t in load_templates(templates, ds.card)], templates
        descs, desc_source = None, "none"
        if descriptions != "none":
            path = resource_dir("prompts") / str(ds.card["cupl"]) if descriptions == "card" and ds.card.get("cupl") \
                else (locate(Path(descriptions)) if descriptions != "card" else None)
            if path is not None:
                descs = match_descriptors(read_descriptor_file(path), ds.classnames, str(path))
                desc_source = display_path(path)
        syn = read_synonyms(synonyms, ds.classnames) if synonyms else None
        client = _llm(llm, base_url, required=False) if stage2 and syn is None else None
        weights = FitnessWeights.parse(fitness) if fitness else FitnessWeights()
        return run_proapo(setup, library, library_source=source, epochs=epochs, max_prompts=max_prompts,
                          fitness=weights, stage2=stage2, synonyms=syn,
                          synonyms_source=display_path(synonyms) if synonyms else "", descriptions=descs,
                          descriptions_source=desc_source, descriptions_per_class=descriptions_per_class,
                          llm=client, llm_model=client.model if client else None, domain=dataset_domain(ds),
                          job_dir=job_dir, budget=budget, output_dir=output_dir, evaluate_test=not no_test)

    result = _run(go)
    out.print(f"template set ({len(result['chosen'])}): " + " | ".join(result["chosen"]), highlight=False)
    if "stage2" in result:
        out.print(f"per-class prompts: the state after {result['stage2']['chosen']} (best on validation)",
                  highlight=False)
    if "test_stage1" in result:
        out.print(f"test top-1 of the stage-1 template set: {result['test_stage1']['top1']:.2f}", highlight=False)
    _print_result(result, dataset)


@app.command("status")
def status(job_dir: Annotated[Path, typer.Argument(help="A search job folder.")],
           as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False) -> None:
    """Where a search job stands: status, step, evaluations, LLM calls and cost, best fitness, outputs."""
    from .job import job_status

    info = _run(lambda: job_status(job_dir))
    if as_json:
        out.print_json(json.dumps(info))
        return
    best = "-" if info["best_fitness"] is None else f"{info['best_fitness']:.4f}"
    out.print(f"{info['kind']} job {info['fingerprint']} at {info['path']}\nstatus: {info['status']}, step "
              f"{info['step']}, {info['evaluations']:,} evaluations, best fitness {best}\nLLM: {info['llm_calls']} "
              f"calls ({info['llm_cached']} cached), est. ${info['llm_cost_usd']:.4f}", highlight=False)
    if "result" in info:
        for name, path in info["result"].get("outputs", {}).items():
            out.print(f"{name}: {path}", highlight=False)
        if "test" in info["result"]:
            out.print(f"test top-1 (once, after the search): {info['result']['test']['top1']:.2f}", highlight=False)
