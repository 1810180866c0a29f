"""The ``zsclip describe`` and ``zsclip synonyms`` commands: generate a dataset's descriptor or synonym file
with an LLM, print what it cost and which classes failed.

Both are plain typer command functions, registered on the main app by ``zsclip.cli``. They parse options,
call ``zsclip.generate`` and print; a ``ZsclipError`` (bad option, unreachable server, budget reached) is
printed as one line with exit code 2. Every answer is cached, so running a command again after a budget
stop or a crash resumes it, and a finished one makes no call at all.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .cli_common import DatasetOpt, RootOpt, err, out, run_or_exit
from .errors import ZsclipError
from .generate import (
    FILTER_TEMPLATE,
    GenerationResult,
    filter_synonyms,
    generate_descriptors,
    generate_synonyms,
    write_descriptor_file,
    write_synonym_file,
)
from .paths import cache_root

if TYPE_CHECKING:
    from .datasets import Dataset
    from .llm import LLMClient



class PromptStyleChoice(str, Enum):
    """The descriptor styles offered on the command line (``zsclip.generate.STYLES``)."""

    cbd = "cbd"
    cupl = "cupl"
    contrastive = "contrastive"


LLMOpt = Annotated[str | None, typer.Option(
    "--llm", help="LLM model name as the server knows it (default: $ZSCLIP_LLM_MODEL).")]
BaseUrlOpt = Annotated[str | None, typer.Option(
    "--base-url", help="Chat-completions server, usually ending in /v1 (default: $ZSCLIP_LLM_BASE_URL, "
    "else $OPENAI_BASE_URL, else OpenAI).")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="File to write (default: under $ZSCLIP_HOME/generated/<dataset>/; the path is printed).")]
MaxCallsOpt = Annotated[int | None, typer.Option("--max-calls", help="Stop before making more LLM calls than this.")]
MaxCostOpt = Annotated[float | None, typer.Option(
    "--max-cost", help="Stop before the estimated cost passes this many USD (prompts/llm_prices.json).")]
RefreshOpt = Annotated[bool, typer.Option("--refresh", help="Ask again instead of reusing cached answers.")]
TemperatureOpt = Annotated[float | None, typer.Option(
    "--temperature", help="Sampling temperature (default: 0, CuPL 0.99).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed sent to the server (sample k uses seed + k).")]
PromptFileOpt = Annotated[Path | None, typer.Option(
    "--prompt-file", help="Meta-prompt file to use instead of the shipped prompts/meta/ one.")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="CLIP model for the zero-shot run (contrastive confusions, synonym filter); "
    "default: the dataset card's, else ViT-B-32.")]
PretrainedOpt = Annotated[str | None, typer.Option("--pretrained", help="CLIP weights tag or checkpoint file.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for each LLM reply.")]
RetriesOpt = Annotated[int, typer.Option(
    "--retries", help="How often a failed request (rate limit, server error, timeout) is tried again.")]


def _file_part(model: str) -> str:
    """A model name usable in a file name: ``org/model:tag`` → ``org-model-tag``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-") or "llm"


def default_output(dataset: str, kind: str, model: str) -> Path:
    """``$ZSCLIP_HOME/generated/<dataset>/descriptors_<style>_<model>.json`` (or ``synonyms_<model>.json``).

    Under the user's cache root, never in the package's ``prompts/`` folder: the files shipped with zsclip
    are read-only to it (a generated file must not replace the dataset card's CuPL or synonym file).
    """
    stem = "synonyms" if kind == "synonyms" else f"descriptors_{kind}"
    name = f"{stem}_{_file_part(model)}.json"
    return cache_root() / "generated" / dataset / name


def dataset_domain(dataset: Dataset) -> str:
    """The word the meta-prompts use for the dataset's domain: the card's first domain word, else "object"."""
    words = dataset.card.get("domain_words") or []
    return str(words[0]) if words else "object"


def _client(llm: str | None, base_url: str | None, max_calls: int | None, max_cost: float | None,
            refresh: bool, timeout: float, retries: int) -> LLMClient:
    """The LLM client of a command; says at once which server it asks and where replies are cached."""
    from .llm import LLMClient, RetryPolicy

    if retries < 0:
        raise ZsclipError(f"--retries must be 0 or more, got {retries}")
    client = LLMClient(llm, base_url=base_url, max_calls=max_calls, max_cost=max_cost, refresh=refresh,
                       timeout=timeout, retry=RetryPolicy(max_retries=retries))
    cache = f", replies cached in {client.cache.path}" if client.cache is not None else ""
    err.print(f"LLM {client.model} at {client.server} (timeout {timeout:g} s, {retries} retries{cache})",
              highlight=False, markup=False)
    return client


def _report(result: GenerationResult, path: Path, what: str, accounting_line: str) -> None:
    counts = result.provenance["counts"]
    out.print(f"wrote {path}: {counts['succeeded']} of {counts['classes']} classes, {counts['items']} {what}",
              highlight=False)
    out.print(accounting_line, highlight=False)
    if result.failed:
        names = list(result.failed)
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        err.print(f"[yellow]{len(names)} classes failed[/] (their bad replies are cached; --refresh asks again): "
                  f"{', '.join(names[:20])}{more}", highlight=False)


def describe(
    dataset: DatasetOpt,
    dataset_root: RootOpt = None,
    llm: LLMOpt = None,
    base_url: BaseUrlOpt = None,
    prompt_style: Annotated[PromptStyleChoice, typer.Option(
        "--prompt-style", help="cbd: CbD's few-shot '- feature' lists; cupl: CuPL sentences; contrastive: "
        "features that separate each class from its most-confused classes.")] = PromptStyleChoice.cbd,
    output: OutputOpt = None,
    samples: Annotated[int | None, typer.Option(
        "--samples", help="Answers per prompt (default: 1, CuPL 3 per prompt line).")] = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = 0,
    prompt_file: PromptFileOpt = None,
    max_calls: MaxCallsOpt = None,
    max_cost: MaxCostOpt = None,
    refresh: RefreshOpt = False,
    confusions: Annotated[int, typer.Option(
        "--confusions", help="contrastive: how many most-confused classes each prompt names.")] = 3,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    timeout: TimeoutOpt = 120.0,
    retries: RetriesOpt = 6,
) -> None:
    """Generate descriptors for every class of a dataset with an LLM and write them as CbD JSON + provenance."""
    from .datasets import get_dataset

    def go() -> None:
        ds = get_dataset(dataset, dataset_root)
        style = prompt_style.value
        with _client(llm, base_url, max_calls, max_cost, refresh, timeout, retries) as client:
            confused = None
            if style == "contrastive":
                from .pipeline import zero_shot_confusions

                confused = zero_shot_confusions(ds, model, pretrained, confusions)
            result = generate_descriptors(ds.classnames, client, style, domain=dataset_domain(ds),
                                          confusions=confused, samples=samples, temperature=temperature,
                                          seed=seed, prompt_file=prompt_file)
            line = client.accounting.summary()
            target = output or default_output(ds.name, style, client.model)
        if not result.succeeded:
            raise ZsclipError(f"no class got descriptors ({line}); nothing written. First failure: "
                              f"{next(iter(result.failed.values()))}")
        path = write_descriptor_file(target, result.per_class, result.provenance)
        _report(result, path, "descriptors", line)

    run_or_exit(go)


def synonyms(
    dataset: DatasetOpt,
    dataset_root: RootOpt = None,
    llm: LLMOpt = None,
    base_url: BaseUrlOpt = None,
    output: OutputOpt = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature.")] = 0.0,
    seed: SeedOpt = 0,
    prompt_file: PromptFileOpt = None,
    max_calls: MaxCallsOpt = None,
    max_cost: MaxCostOpt = None,
    refresh: RefreshOpt = False,
    filter_: Annotated[bool, typer.Option(
        "--filter", help="Keep a synonym only if CLIP classifies 'a photo of a {synonym}' as its own class.")] = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    timeout: TimeoutOpt = 120.0,
    retries: RetriesOpt = 6,
) -> None:
    """Ask an LLM for the common names of every class (REAL) and write them in REAL's synonym format."""
    from .datasets import get_dataset

    def go() -> None:
        ds = get_dataset(dataset, dataset_root)
        with _client(llm, base_url, max_calls, max_cost, refresh, timeout, retries) as client:
            result = generate_synonyms(ds.classnames, client, domain=dataset_domain(ds), temperature=temperature,
                                       seed=seed, prompt_file=prompt_file)
            line = client.accounting.summary()
            target = output or default_output(ds.name, "synonyms", client.model)
        if not result.succeeded:
            raise ZsclipError(f"no class got a synonym list ({line}); nothing written. First failure: "
                              f"{next(iter(result.failed.values()))}")
        per_class, provenance = result.per_class, dict(result.provenance)
        if filter_:
            from .models import load_model
            from .pipeline import clip_text_classifier, default_model

            clip_model, clip_pretrained = default_model(ds, model, pretrained)
            per_class = filter_synonyms(per_class, clip_text_classifier(ds, load_model(clip_model, clip_pretrained)))
            kept = sum(len(v) - 1 for v in per_class.values())
            total = sum(len(v) - 1 for v in result.per_class.values())
            provenance["clip_filter"] = {"model": clip_model, "pretrained": clip_pretrained,
                                         "template": FILTER_TEMPLATE, "kept": kept, "generated": total}
            provenance["counts"] = {**provenance["counts"], "items": sum(len(v) for v in per_class.values())}
            out.print(f"CLIP filter kept {kept} of {total} synonyms", highlight=False)
        path = write_synonym_file(target, per_class, provenance)
        _report(GenerationResult(result.kind, per_class, result.failed, provenance), path, "names", line)

    run_or_exit(go)
