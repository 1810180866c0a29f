"""Command line of the toy world: ``generate`` (spec, corpus, prompt files), ``train`` (the tiny CLIP),
``corpus`` (export as a clip-retrieval folder), ``info``.

Mounted as ``zsclip world ...``; standalone as ``python -m zsclip.world.cli ...``. Generated artefacts
that are not committed (the corpus parquet, the rendered-image cache, training checkpoints) go under
``<zsclip cache>/toyworld`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .._io import write_json_atomic
from ..paths import cache_root, resource_dir
from . import MODEL_DIR
from .corpus import (
    EXPORT_SHARD_ROWS,
    build_corpus,
    export_corpus,
    read_corpus,
    real_synonyms,
    synonym_counts,
    write_corpus,
)
from .oracle import llm_serve
from .spec import DEFAULT_SEED, TIERS, build_world, dataset_card, descriptors, world_summary
from .train import TrainConfig, train

app = typer.Typer(help="The toy world: a procedural image world, its caption corpus and a tiny CLIP.",
                  no_args_is_help=True)
err = Console(stderr=True)
out = Console(soft_wrap=True)

CORPUS_NAME = "corpus.parquet"


def default_out() -> Path:
    """Where generated, uncommitted artefacts go by default."""
    return cache_root() / "toyworld"


def prompts_dir() -> Path:
    """The shipped folder of toy-world prompt files."""
    return resource_dir("prompts") / "toyworld"


def card_path() -> Path:
    """The shipped dataset card of the toyworld dataset."""
    return resource_dir("datasets") / "toyworld.json"


def _generate(seed: int, scale: float, out_dir: Path, prompts: Path, card: Path) -> Path:
    world = build_world(seed)
    table = build_corpus(world, scale)
    corpus_path = write_corpus(table, out_dir / CORPUS_NAME)
    cbd, truth = descriptors(world)
    prompts.mkdir(parents=True, exist_ok=True)
    write_json_atomic(prompts / "descriptors.json", cbd)
    write_json_atomic(prompts / "descriptors_truth.json", truth)
    write_json_atomic(prompts / "synonyms.json", real_synonyms(world, table.column("caption").to_pylist()))
    write_json_atomic(prompts / "world.json", world_summary(world))
    write_json_atomic(card, dataset_card(world))
    return corpus_path


@app.command()
def generate(
    seed: int = typer.Option(DEFAULT_SEED, help="World seed: species, names, corpus and prompts follow from it."),
    scale: float = typer.Option(1.0, help="Multiply every species' corpus image count (1.0 = about 96k rows)."),
    out_dir: Path = typer.Option(None, "--out", help="Folder for the corpus [default: <cache>/toyworld]."),
    prompts: Path = typer.Option(None, help="Folder for the prompt files [default: prompts/toyworld]."),
    card: Path = typer.Option(None, help="Dataset card to write [default: datasets/toyworld.json]."),
) -> None:
    """Build the world from SEED, write the caption corpus (parquet), the prompt files and the dataset card."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = out_dir or default_out()
    prompts = prompts or prompts_dir()
    corpus_path = _generate(seed, scale, out_dir, prompts, card or card_path())
    out.print(f"corpus: {corpus_path}")
    out.print(f"prompt files: {prompts}")


@app.command("train")
def train_cmd(
    seed: int = typer.Option(0, help="Training seed (initialisation and batch order)."),
    world_seed: int = typer.Option(DEFAULT_SEED, help="World seed, used when the corpus must be generated."),
    steps: int = typer.Option(TrainConfig.steps, help="Optimiser steps."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Image-caption pairs per step."),
    lr: float = typer.Option(TrainConfig.lr, help="Peak learning rate (warm-up, then cosine decay)."),
    threads: int = typer.Option(TrainConfig.threads, help="torch CPU threads."),
    workers: int = typer.Option(TrainConfig.render_workers, help="Processes that render the corpus images."),
    out_dir: Path = typer.Option(None, "--out", help="Corpus, image cache, checkpoint [default: <cache>/toyworld]."),
    model_dir: Path = typer.Option(MODEL_DIR, help="Where the open_clip local-dir model folder is written."),
) -> None:
    """Train the tiny CLIP on the corpus (generated first if missing) and write the model folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = out_dir or default_out()
    corpus_path = out_dir / CORPUS_NAME
    if not corpus_path.is_file():
        err.print(f"no corpus at {corpus_path}; generating it (world seed {world_seed})")
        _generate(world_seed, 1.0, out_dir, prompts_dir(), card_path())
    table = read_corpus(corpus_path)
    cfg = TrainConfig(seed=seed, steps=steps, batch_size=batch_size, lr=lr, threads=threads,
                      render_workers=workers)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task("training", total=steps)

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, description=f"training (loss {loss:.3f})")

        summary = train(table, out_dir, model_dir, cfg, progress=on_step)
    out.print(json.dumps(summary, indent=2))
    out.print(f"model folder: {model_dir} (load with open_clip.create_model_and_transforms('local-dir:{model_dir}'))")


@app.command("corpus")
def corpus_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the clip-retrieval layout into."),
    seed: int = typer.Option(DEFAULT_SEED, help="World seed."),
    scale: float = typer.Option(1.0, help="Multiply every species' corpus image count (1.0 = about 96k rows)."),
    limit: int = typer.Option(None, help="Export only the first N rows (after --scale)."),
    shard_rows: int = typer.Option(EXPORT_SHARD_ROWS, help="Rows per metadata/embedding shard."),
    workers: int = typer.Option(2, help="Processes that render the corpus images."),
    threads: int = typer.Option(2, help="torch CPU threads for encoding."),
) -> None:
    """Export the world's caption corpus as a clip-retrieval folder: metadata, image and text embeddings.

    metadata/metadata_N.parquet (caption, image_path "toyworld-corpus:<render seed>", species, tier, ...),
    img_emb/img_emb_N.npy (the rendered images encoded by the toy model) and text_emb/text_emb_N.npy (the
    captions encoded by it), float16 and L2-normalised, rows aligned 1:1. Read it with `zsclip corpus`.
    An interrupted export resumes at its first incomplete shard.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import numpy as np
    import torch

    from ..errors import ZsclipError
    from ..models import load_model
    from .train import corpus_fingerprint

    torch.set_num_threads(max(1, threads))
    world = build_world(seed)
    table = build_corpus(world, scale)
    cached = default_out() / f"images-{corpus_fingerprint(table)}.npy"
    images = np.load(cached, mmap_mode="r") if cached.is_file() else None
    if limit is not None:
        table = table.slice(0, max(0, limit))
    if table.num_rows == 0:
        err.print("error: nothing to export (--limit 0)")
        raise typer.Exit(2)
    if images is not None:
        err.print(f"using the rendered corpus images cached by `zsclip world train`: {cached}")
    encoder = load_model("toyworld", None, device="cpu")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task("rendering and encoding", total=table.num_rows)
        try:
            summary = export_corpus(world, table, out_dir, encoder, shard_rows=shard_rows, workers=workers,
                                    images=images, progress=lambda k: bar.advance(task, k))
        except ZsclipError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    out.print(f"corpus: {out_dir} ({summary['rows']} rows, {summary['shards']} shards, {summary['seconds']} s)")
    out.print(f"count names with: zsclip corpus count --corpus {out_dir} --synonyms {prompts_dir() / 'synonyms.json'} "
              "--output metrics.json")


@app.command()
def info(
    seed: int = typer.Option(DEFAULT_SEED, help="World seed."),
    out_dir: Path = typer.Option(None, "--out", help="Corpus folder [default: <cache>/toyworld]."),
    model_dir: Path = typer.Option(MODEL_DIR, help="Model folder to describe."),
) -> None:
    """Show the world's tiers, the corpus statistics (when generated) and the model folder."""
    world = build_world(seed)
    out_dir = out_dir or default_out()
    corpus_path = out_dir / CORPUS_NAME
    captions = read_corpus(corpus_path).column("caption").to_pylist() if corpus_path.is_file() else None
    counts = synonym_counts(captions, [s.name for s in world.species]) if captions else {}
    table = Table(title=f"toy world (seed {seed}): {len(world.species)} species, {len(world.genus_words)} genera")
    for col in ("tier", "species", "corpus images/species", "p(named)", "official-name captions (mean)"):
        table.add_column(col)
    for tier, plan in TIERS.items():
        members = world.by_tier(tier)
        mean = (f"{sum(counts[s.name] for s in members) / max(1, len(members)):.0f}" if counts else "-")
        lo, hi = plan["images"]
        table.add_row(tier, str(len(members)), f"{lo}-{hi}", f"{plan['p_named']:.2f}", mean)
    out.print(table)
    out.print(f"corpus: {corpus_path if captions else 'not generated (run `zsclip world generate`)'}"
              + (f", {len(captions)} captions" if captions else ""))
    weights = model_dir / "open_clip_model.safetensors"
    if weights.is_file():
        size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
        out.print(f"model: {model_dir} ({size / 1e6:.1f} MB)")
    else:
        out.print(f"model: none at {model_dir} (run `zsclip world train`)")


app.command("llm-serve")(llm_serve)

if __name__ == "__main__":
    app()
