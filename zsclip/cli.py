"""The ``zsclip`` command line: parse options, call the library, print results.

Errors a user can fix (``ZsclipError``) are printed as one message with exit code 2, without a trace.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .cli_common import DatasetOpt, ModelOpt, PretrainedOpt, RootOpt, out, run_or_exit
from .corpus_cli import app as corpus_app
from .errors import ZsclipError
from .generate_cli import describe, synonyms
from .world.cli import app as world_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-shot image classification with CLIP-family models.")
datasets_app = typer.Typer(no_args_is_help=True, help="List and download datasets.")
models_app = typer.Typer(no_args_is_help=True, help="List and download model weights.")
store_app = typer.Typer(no_args_is_help=True, help="Inspect image stores.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")



class Aggregation(str, Enum):
    mean = "mean"
    max = "max"
    sum = "sum"


# -- options shared by the commands below -----------------------------------------------------------------
SplitOpt = Annotated[str | None, typer.Option("--split", help="Split to use (default: the dataset's test split).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, fp16 or bf16 (autocast on CUDA).")]
StoreOpt = Annotated[Path | None, typer.Option(
    "--store", help="Image store folder (default: under the cache root, $ZSCLIP_HOME).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Threads decoding images.")]


def _method_options(method: str, *, templates: str | None = None, descriptors: str | None = None,
                    aggregation: Aggregation | None = None, before: str | None = None, after: str | None = None,
                    published_quirk: bool = False, attribute_threshold: float | None = None,
                    count: int | None = None, words: int | None = None, seeds: int | None = None,
                    mixed: bool = False, dds_k: int | None = None, dds_m: int | None = None,
                    dds_n: int | None = None, dds_form: str | None = None,
                    dds_weight: float | None = None) -> dict[str, Any]:
    """The CLI options that apply to ``method``, as its constructor's keyword arguments."""
    if method == "classnames":
        return {"templates": templates}
    if method == "descriptions":
        return {"descriptors": descriptors, "aggregation": aggregation.value if aggregation else None,
                "before": before, "after": after, "published_quirk": published_quirk or None,
                "attribute_threshold": attribute_threshold}
    if method == "waffle":
        return {"descriptors": descriptors, "count": count, "n_words": words,
                "seeds": tuple(range(seeds)) if seeds else None, "mixed": mixed or None, "before": before,
                "after": after}
    if method == "cupl":
        return {"sentences": descriptors}
    if method == "dds":
        return {"descriptors": descriptors, "k": dds_k, "m": dds_m, "n": dds_n, "form": dds_form,
                "weight": dds_weight, "aggregation": aggregation.value if aggregation else None,
                "template": templates}
    return {}


def _print_metrics(record: dict[str, Any]) -> None:
    m = record["metrics"]
    table = Table(title=f"{record['dataset']}/{record['split']} · {record['method']} · {record['model']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("top1", "top5", "mean_per_class_recall"):
        if key in m:
            std = f" ± {m[key + '_std']:.2f}" if key + "_std" in m else ""
            table.add_row(key, f"{m[key]:.2f}{std}")
    if "seeds" in m:
        table.add_row("seeds", str(m["seeds"]))
    table.add_row("images", str(m["num_images"]))
    table.add_row("classes", str(m["num_classes"]))
    out.print(table)
    c = record["counts"]
    out.print(f"encoded this run: {c['images_encoded']} images, {c['texts_encoded']} texts · "
              f"unreadable images skipped: {c['images_skipped']} · texts truncated: {c['texts_truncated']}",
              highlight=False)


@app.command()
def classify(
    dataset: DatasetOpt,
    method: Annotated[str, typer.Option(
        "--method", "-m", help="classnames, descriptions (CbD), waffle (random descriptors), cupl or dds.")
    ] = "classnames",
    dataset_root: RootOpt = None,
    split: SplitOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    templates: Annotated[str | None, typer.Option(
        "--templates", help="classnames (and the dds class-name prompt): simple, ensemble, openai-imagenet, a "
        "file, or a literal with {}.")] = None,
    descriptors: Annotated[str | None, typer.Option(
        "--descriptors", help="descriptions/waffle/dds: a CbD/CuPL/DDS JSON file, or 'attributes' (dataset "
        "annotations); cupl: the sentence file. Default: the dataset card's file.")] = None,
    aggregation: Annotated[Aggregation | None, typer.Option(
        "--aggregation", help="descriptions: mean (CbD), max or sum of the descriptor cosines; dds classname "
        "form: mean or max.")] = None,
    before: Annotated[str | None, typer.Option("--before", help="descriptions: text before each prompt.")] = None,
    after: Annotated[str | None, typer.Option("--after", help="descriptions: text after each prompt.")] = None,
    published_quirk: Annotated[bool, typer.Option(
        "--published-quirk", help="descriptions: phrase as the CbD authors' code did (startswith 'a').")] = False,
    attribute_threshold: Annotated[float | None, typer.Option(
        "--attribute-threshold", help="descriptions from attributes: min. % of a class's images.")] = None,
    count: Annotated[int | None, typer.Option("--count", help="waffle: random word+char pairs (15).")] = None,
    words: Annotated[int | None, typer.Option("--words", help="waffle: words per random descriptor (2).")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="waffle: number of seeds, mean ± std (7).")] = None,
    mixed: Annotated[bool, typer.Option("--mixed", help="waffle: 1/3 real descriptors, 2/3 random.")] = False,
    dds_k: Annotated[int | None, typer.Option("--dds-k", help="dds: neighbourhood size k (3).")] = None,
    dds_m: Annotated[int | None, typer.Option("--dds-m", help="dds: descriptions per candidate m (5).")] = None,
    dds_n: Annotated[int | None, typer.Option("--dds-n", help="dds: selection images per class (1000).")] = None,
    dds_form: Annotated[str | None, typer.Option(
        "--dds-form", help="dds: classname-free (default) or classname.")] = None,
    dds_weight: Annotated[float | None, typer.Option(
        "--dds-weight", help="dds classname-free: class-name weight w (default: chosen on the val split).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON record here.")] = None,
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Write per-image predictions and top-5 scores (parquet) here.")] = None,
    explain: Annotated[int, typer.Option("--explain", help="Print explanations for the first N images.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    store: StoreOpt = None,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 4,
) -> None:
    """Evaluate a zero-shot method on a dataset split: metrics, a JSON record, optional predictions."""
    from .pipeline import classify as run_classify
    from .pipeline import write_record

    def go() -> None:
        opts = _method_options(method, templates=templates, descriptors=descriptors, aggregation=aggregation,
                               before=before, after=after, published_quirk=published_quirk,
                               attribute_threshold=attribute_threshold, count=count, words=words, seeds=seeds,
                               mixed=mixed, dds_k=dds_k, dds_m=dds_m, dds_n=dds_n, dds_form=dds_form,
                               dds_weight=dds_weight)
        run = run_classify(dataset, method, dataset_root=dataset_root, split=split, model=model,
                           pretrained=pretrained, device=device, precision=precision, store=store,
                           batch_size=batch_size, workers=workers, method_options=opts)
        _print_metrics(run.record)
        for row in range(min(explain, len(run.store))):
            out.print(f"\n[bold]image {row}[/] {run.store.paths[row]}")
            out.print(run.explain(row).to_text(), highlight=False)
        if output:
            write_record(run.record, output)
            out.print(f"record written to {output}")
        if predictions:
            run.write_predictions(predictions)
            out.print(f"predictions written to {predictions}")

    run_or_exit(go)


@app.command("explain")
def explain_cmd(
    dataset: DatasetOpt,
    image: Annotated[list[int], typer.Option("--image", "-i", help="Row(s) of the split's store to explain.")],
    method: Annotated[str, typer.Option("--method", "-m")] = "descriptions",
    dataset_root: RootOpt = None,
    split: SplitOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    descriptors: Annotated[str | None, typer.Option("--descriptors")] = None,
    templates: Annotated[str | None, typer.Option("--templates")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    device: DeviceOpt = "auto",
    store: StoreOpt = None,
) -> None:
    """Explain predictions: each descriptor's similarity for the predicted, true and runner-up classes."""
    from .pipeline import classify as run_classify

    def go() -> None:
        opts = _method_options(method, templates=templates, descriptors=descriptors)
        run = run_classify(dataset, method, dataset_root=dataset_root, split=split, model=model,
                           pretrained=pretrained, device=device, store=store, method_options=opts)
        for row in image:
            if not 0 <= row < len(run.store):
                raise ZsclipError(f"--image {row} is out of range: the store has {len(run.store)} images")
            expl = run.explain(row)
            if as_json:
                out.print_json(json.dumps({"image": row, "path": run.store.paths[row], "rows": expl.to_records()}))
            else:
                out.print(f"[bold]image {row}[/] {run.store.paths[row]}")
                out.print(expl.to_text(), highlight=False)

    run_or_exit(go)


@app.command()
def embed(
    dataset: DatasetOpt,
    dataset_root: RootOpt = None,
    split: SplitOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float16 or float32 embeddings on disk.")] = "float16",
    index: Annotated[str, typer.Option("--index", help="FAISS index-factory string (inner product).")] = "Flat",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    store: StoreOpt = None,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 4,
) -> None:
    """Build (or resume, or reuse) the image store of a dataset split."""
    from .datasets import get_dataset
    from .pipeline import encoder_for
    from .stores import ImageStore

    def go() -> None:
        ds = get_dataset(dataset, dataset_root)
        encoder = encoder_for(ds, model, pretrained, device=device, precision=precision)
        s = ImageStore.build(ds, split or ds.default_split, encoder, store, dtype=dtype, index=index,
                             batch_size=batch_size, workers=workers)
        out.print(f"store {s.path}: {len(s)} images, dim {s.dim}, {s.manifest['dtype']}; encoded this run: "
                  f"{s.build_stats.images_encoded}; unreadable skipped: {s.build_stats.images_skipped}",
                  highlight=False)

    run_or_exit(go)


@app.command("audit-descriptions")
def audit_descriptions_cmd(
    dataset: DatasetOpt,
    descriptors: Annotated[str | None, typer.Option(
        "--descriptors", help="Descriptor file (default: the dataset card's), or 'attributes'.")] = None,
    dataset_root: RootOpt = None,
    split: Annotated[str, typer.Option("--split", help="Held-out split the audit reports on.")] = "test",
    val_split: Annotated[str, typer.Option("--val-split", help="Split the class-name weight w is chosen on.")]
    = "val",
    selection_split: Annotated[str, typer.Option(
        "--selection-split", help="Labelled split for per-description discriminativeness.")] = "train",
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds for reassignment and WaffleCLIP.")] = 5,
    truth: Annotated[Path | None, typer.Option(
        "--truth", help="Truth file {class: [{descriptor, kind}]} (default: X_truth.json beside X.json).")] = None,
    oracle: Annotated[bool, typer.Option(
        "--oracle", help="Also report w chosen on the held-out split itself (an oracle, labelled so).")] = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = "auto",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON record here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the discriminativeness plot (PNG) here.")]
    = None,
    show: Annotated[int, typer.Option("--show", help="List the N least discriminative descriptions.")] = 10,
) -> None:
    """Does a description set carry meaning? Real vs reassigned descriptions, WaffleCLIP, discriminativeness."""
    from .audit import audit_descriptions, plot_discriminativeness, summary_table
    from .datasets import get_dataset
    from .pipeline import encoder_for, write_record

    def go() -> None:
        ds = get_dataset(dataset, dataset_root)
        encoder = encoder_for(ds, model, pretrained, device=device)
        record = audit_descriptions(ds, encoder, descriptors, split=split, val_split=val_split,
                                    selection_split=selection_split, seeds=seeds, truth=truth, oracle=oracle)
        table = Table(title=f"description audit: {record['dataset']}/{split} · {record['descriptors']}")
        table.add_column("")
        table.add_column("top-1 %", justify="right")
        for label, value in summary_table(record):
            table.add_row(label, value)
        out.print(table)
        if show:
            worst = Table(title=f"the {show} least discriminative descriptions ({selection_split} split)")
            for col in ("class", "descriptor", "discriminativeness", "kind"):
                worst.add_column(col)
            for r in record["discriminativeness"][-show:][::-1]:
                worst.add_row(r["class"], r["descriptor"], f"{r['discriminativeness']:+.4f}", r.get("kind", ""))
            out.print(worst)
        if output:
            write_record(record, output)
            out.print(f"record written to {output}")
        if plot:
            plot_discriminativeness(record, plot)
            out.print(f"plot written to {plot}")

    run_or_exit(go)


@datasets_app.command("list")
def datasets_list() -> None:
    """List the registered datasets."""
    from .datasets import list_datasets

    table = Table("dataset", "description")
    for name, summary in list_datasets():
        table.add_row(name, summary)
    out.print(table)


@datasets_app.command("info")
def datasets_info(dataset: DatasetOpt, dataset_root: RootOpt = None,
                  classes: Annotated[bool, typer.Option("--classes", help="Also list class names.")] = False) -> None:
    """Show a dataset's classes and split sizes."""
    from .datasets import get_dataset

    def go() -> None:
        ds = get_dataset(dataset, dataset_root)
        info = ds.describe()
        if classes:
            info["classnames"] = list(ds.classnames)
        out.print_json(json.dumps(info))

    run_or_exit(go)


@datasets_app.command("download")
def datasets_download(
    name: Annotated[str, typer.Argument(help="Dataset with a download address in its card, e.g. cub.")],
    root: Annotated[Path | None, typer.Option("--root", help="Where to put it (default: cache root).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Download from this address instead.")] = None,
) -> None:
    """Download and safely extract a dataset archive, checking its checksum."""
    from .datasets.download import download_dataset

    def go() -> None:
        path = download_dataset(name, root=root, url=url)
        out.print(f"{name} is at {path}; use --dataset-root {path}", highlight=False)

    run_or_exit(go)


@models_app.command("list")
def models_list(cached: Annotated[bool, typer.Option("--cached", help="Only models whose weights are here.")]
                = False) -> None:
    """List open_clip architectures with pretrained tags, and whether their weights are on this machine."""
    from .models import list_models

    table = Table("model", "pretrained", "weights here")
    for row in list_models():
        if cached and not row["cached"]:
            continue
        table.add_row(row["model"], row["pretrained"], "yes" if row["cached"] else "")
    out.print(table)


@models_app.command("download")
def models_download(
    model: Annotated[str, typer.Argument(help="Architecture, or hf-hub:ORG/NAME.")],
    pretrained: Annotated[str | None, typer.Argument(help="Pretrained tag.")] = None,
) -> None:
    """Fetch a model's weights into the local cache (needs network; fails fast when offline)."""
    from .models import resolve_weights

    def go() -> None:
        resolved = resolve_weights(model, pretrained)
        out.print(f"weights at {resolved.weights}", highlight=False)

    run_or_exit(go)


@store_app.command("info")
def store_info(path: Annotated[Path, typer.Argument(help="Image store folder.")]) -> None:
    """Print a store's manifest (model, dataset, split, count, dim, dtype, skipped images)."""
    from .stores import ImageStore

    def go() -> None:
        out.print_json(json.dumps(ImageStore.open(path).info()))

    run_or_exit(go)


app.command("describe")(describe)
app.command("synonyms")(synonyms)
app.add_typer(corpus_app, name="corpus", help="Caption corpora (LAION shards, clip-retrieval folders): info, count.")
app.add_typer(world_app, name="world", help="The built-in offline toy world: generate, train, table, llm-serve.")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()
