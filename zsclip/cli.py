"""The ``zsclip`` command line: parse options, call the library, print results.

Errors a user can fix (``ZsclipError``) are printed as one message with exit code 2, without a trace.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .cli_common import DatasetOpt, ModelOpt, PretrainedOpt, RootOpt, err, out, run_or_exit
from .corpus_cli import app as corpus_app
from .errors import ZsclipError
from .generate_cli import describe, synonyms
from .pipeline import SUMMARY_METRICS
from .records import Record
from .search.cli import app as search_app
from .world.cli import app as world_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-shot image classification with CLIP-family models.")
datasets_app = typer.Typer(no_args_is_help=True, help="List and download datasets.")
models_app = typer.Typer(no_args_is_help=True, help="List and download model weights.")
store_app = typer.Typer(no_args_is_help=True, help="Inspect image stores.")
methods_app = typer.Typer(no_args_is_help=True, help="List methods and their parameters.")
records_app = typer.Typer(no_args_is_help=True, help="Collect run records into tables.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")
app.add_typer(methods_app, name="methods")
app.add_typer(records_app, name="records")


# -- options shared by the commands below -----------------------------------------------------------------
MethodOpt = Annotated[str, typer.Option("--method", "-m", help="A registered method (`zsclip methods list`).")]
ParamOpt = Annotated[list[str] | None, typer.Option(
    "--param", "-p", help="A method parameter as NAME=VALUE, repeatable (`zsclip methods show METHOD`).")]
SeedsOpt = Annotated[int | None, typer.Option(
    "--seeds", help="Randomised methods: how many seeds to run (mean ± std); default: the method's.")]
ShotsOpt = Annotated[int | None, typer.Option(
    "--shots", help="Fitted methods: training images per class drawn from the fit split (default: all).")]
ShotSeedOpt = Annotated[int, typer.Option("--shot-seed", help="Seed of the --shots draw.")]
SplitOpt = Annotated[str | None, typer.Option(
    "--split", help="Split to evaluate on (default: the dataset's test split).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, fp16 or bf16 (autocast on CUDA).")]
StoreOpt = Annotated[Path | None, typer.Option(
    "--store", help="Image store folder of the evaluated split (default: under the cache root, $ZSCLIP_HOME).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Threads decoding images.")]
DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", help="float16 or float32 embeddings on disk (default: float16, or the existing store's).")]
FromRecordOpt = Annotated[Path | None, typer.Option(
    "--from-record", help="Re-run the classify record in this JSON file (its dataset, model, method, parameters).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON record here.")]
RebuildOpt = Annotated[bool, typer.Option(
    "--rebuild", help="Discard the image stores this run uses and encode every image again (after damage, or to "
    "change --dtype).")]


def _encoded_line(record: Record) -> str:
    """What this run encoded, per split: "encoded this run: images test 3000, train 1600 · texts 520 · ..."."""
    c = record.counts
    images = c.get("images_encoded", {})
    per_split = ", ".join(f"{split} {n}" for split, n in images.items()) or "none"
    skipped = sum(c.get("images_skipped", {}).values())
    return (f"encoded this run: images {per_split} ({sum(images.values())} in all), {c.get('texts_encoded', 0)} texts"
            f" · unreadable images skipped: {skipped} · texts truncated: {c.get('texts_truncated', 0)}")


def _print_metrics(record: Record) -> None:
    m = record.metrics
    table = Table(title=escape(f"{record.dataset['name']}/{record.dataset['split']} · {record.method['name']} · "
                               f"{record.model['name']}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SUMMARY_METRICS:
        if key in m:
            std = f" ± {m[key + '_std']:.2f}" if key + "_std" in m else ""
            table.add_row(key, f"{m[key]:.2f}{std}")
    if "seeds" in m:
        table.add_row("seeds", f"{m['seeds']} (std: ddof=0)")
    table.add_row("images", str(m["num_images"]))
    table.add_row("classes", str(m["num_classes"]))
    out.print(table)
    if record.fit_info.get("weight_chosen_on"):
        out.print(f"fit: w = {record.fit_info['weight_used']:g} chosen on {record.fit_info['weight_chosen_on']}",
                  highlight=False, markup=False)
    out.print(_encoded_line(record), highlight=False, markup=False)


def _compare_metrics(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The summary metrics that differ between a record and its re-run."""
    return [f"{k}: {got.get(k)} (record: {expected.get(k)})" for k in SUMMARY_METRICS
            if k in expected and got.get(k) != expected.get(k)]


def _file_inputs(params: dict[str, Any]) -> list[Any]:
    """The parameter values that may name input files (so that no output overwrites them)."""
    return [v for v in params.values() if isinstance(v, (str, Path)) and v]


def _same_run(path: Path, spec: dict[str, Any]) -> bool:
    """Whether ``path`` holds a classify record of the run ``spec`` describes (for --skip-existing)."""
    try:
        rec = Record.read(path)
    except ZsclipError:
        return False
    have = rec.spec()
    return all(have.get(k) == v for k, v in spec.items())


@app.command()
def classify(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Registered dataset name "
                                                "(`zsclip datasets list`).")] = None,
    method: MethodOpt = "classnames",
    param: ParamOpt = None,
    seeds: SeedsOpt = None,
    dataset_root: RootOpt = None,
    split: SplitOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    shots: ShotsOpt = None,
    shot_seed: ShotSeedOpt = 0,
    output: OutputOpt = None,
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Write per-image predictions and top-5 scores (parquet) here.")] = None,
    explain: Annotated[int, typer.Option("--explain", help="Print explanations for the first N images.")] = 0,
    from_record: FromRecordOpt = None,
    skip_existing: Annotated[bool, typer.Option(
        "--skip-existing", help="With --output: do nothing when that file already holds this run's record.")] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    store: StoreOpt = None,
    dtype: DtypeOpt = "float16",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 4,
    rebuild: RebuildOpt = False,
) -> None:
    """Evaluate a method on a dataset split: metrics, a JSON record, optional predictions and explanations.

    Method parameters are given as `-p NAME=VALUE` (see `zsclip methods show METHOD`).
    """
    from ._io import check_output_paths
    from .datasets import get_dataset
    from .methods import jsonable_params, make_method, parse_params
    from .pipeline import classify as run_classify
    from .pipeline import classify_from_record, default_model

    def go() -> None:
        if from_record is not None:
            if dataset or param:
                raise ZsclipError("--from-record takes the dataset, method and parameters from the record; "
                                  "leave out --dataset and --param")
            check_output_paths({"--output": output, "--predictions": predictions}, inputs=(from_record,))
            expected = Record.read(from_record)
            run = classify_from_record(expected, device=device, rebuild=rebuild)
        else:
            if not dataset:
                raise ZsclipError("give --dataset NAME (or --from-record FILE)")
            params = parse_params(method, param or [])
            check_output_paths({"--output": None if skip_existing else output, "--predictions": predictions},
                               inputs=_file_inputs(params))
            if skip_existing:
                if output is None:
                    raise ZsclipError("--skip-existing needs --output: it skips the run when that record exists")
                ds = get_dataset(dataset, dataset_root)
                name, pre = default_model(ds, model, pretrained)
                m = make_method(method, **params)
                spec = {"kind": "classify", "method": {"name": method, "params": jsonable_params(m.get_params()),
                                                       "seeds": None if not m.randomised else
                                                       list(range(m.seed, m.seed + (seeds or m.default_seeds)))}}
                spec_model = {"name": name, "pretrained": pre}
                if output.exists() and _same_run(output, spec) and \
                        {k: Record.read(output).model.get(k) for k in spec_model} == spec_model:
                    out.print(f"skipped: {output} already holds this run's record", highlight=False, markup=False)
                    return
                check_output_paths({"--output": output}, inputs=_file_inputs(params))
            run = run_classify(dataset, method, params=params, seeds=seeds, dataset_root=dataset_root, split=split,
                               model=model, pretrained=pretrained, device=device, precision=precision, store=store,
                               store_dtype=dtype, batch_size=batch_size, workers=workers, shots=shots,
                               shot_seed=shot_seed, rebuild=rebuild)
            expected = None
        _print_metrics(run.record)
        for row in range(min(explain, len(run.store))):
            out.print(f"\n[bold]image {row}[/] {escape(run.store.paths[row])}")
            out.print(run.explain(row).to_text(), highlight=False, markup=False)
        if output:
            run.record.write(output)
            out.print(f"record written to {output}", highlight=False, markup=False)
        if predictions:
            run.write_predictions(predictions)
            out.print(f"predictions written to {predictions}", highlight=False, markup=False)
        if expected is not None:
            diffs = _compare_metrics(expected.metrics, run.metrics)
            if diffs:
                err.print("the re-run does NOT reproduce the record's metrics: " + "; ".join(diffs), markup=False)
                raise typer.Exit(1)
            out.print(f"reproduced the record's metrics exactly ({from_record})", highlight=False, markup=False)

    run_or_exit(go)


@app.command("explain")
def explain_cmd(
    image: Annotated[list[int], typer.Option("--image", "-i", help="Row(s) of the split's store to explain.")],
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Registered dataset name.")] = None,
    method: MethodOpt = "descriptions",
    param: ParamOpt = None,
    seeds: SeedsOpt = None,
    dataset_root: RootOpt = None,
    split: SplitOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    from_record: FromRecordOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    device: DeviceOpt = "auto",
    store: StoreOpt = None,
) -> None:
    """Explain predictions: each text's similarity for the predicted, true and runner-up classes.

    DDS shows the descriptions it selected per candidate. Takes the same method parameters as classify, or a
    record (--from-record).
    """
    from .methods import parse_params
    from .pipeline import classify as run_classify
    from .pipeline import classify_from_record

    def go() -> None:
        if from_record is not None:
            run = classify_from_record(from_record, device=device)
        else:
            if not dataset:
                raise ZsclipError("give --dataset NAME (or --from-record FILE)")
            run = run_classify(dataset, method, params=parse_params(method, param or []), seeds=seeds,
                               dataset_root=dataset_root, split=split, model=model, pretrained=pretrained,
                               device=device, store=store)
        for row in image:
            if not 0 <= row < len(run.store):
                raise ZsclipError(f"--image {row} is out of range: the store has {len(run.store)} images")
            expl = run.explain(row)
            if as_json:
                out.print_json(json.dumps({"image": row, "path": run.store.paths[row], "rows": expl.to_records()}))
            else:
                out.print(f"[bold]image {row}[/] {escape(run.store.paths[row])}")
                out.print(expl.to_text(), highlight=False, markup=False)

    run_or_exit(go)


@app.command()
def embed(
    dataset: DatasetOpt,
    dataset_root: RootOpt = None,
    split: SplitOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    dtype: DtypeOpt = None,
    index: Annotated[str | None, typer.Option(
        "--index", help="FAISS index-factory string, inner product (default: Flat, or the existing store's).")]
    = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    store: StoreOpt = None,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 4,
    rebuild: RebuildOpt = False,
) -> None:
    """Build (or resume, refresh, or reuse) the image store of a dataset split."""
    from .datasets import get_dataset
    from .pipeline import encoder_for
    from .stores import ImageStore

    def go() -> None:
        ds = get_dataset(dataset, dataset_root)
        encoder = encoder_for(ds, model, pretrained, device=device, precision=precision)
        s = ImageStore.build(ds, split or ds.default_split, encoder, store, dtype=dtype, index=index,
                             batch_size=batch_size, workers=workers, rebuild=rebuild)
        out.print(f"store {s.path}: {len(s)} images, dim {s.dim}, {s.manifest['dtype']}; encoded this run: "
                  f"{s.build_stats.images_encoded}; unreadable skipped: {s.build_stats.images_skipped}",
                  highlight=False, markup=False)

    run_or_exit(go)


@app.command("audit-descriptions")
def audit_descriptions_cmd(
    dataset: DatasetOpt,
    param: ParamOpt = None,
    dataset_root: RootOpt = None,
    split: Annotated[str | None, typer.Option("--split", help="Split the audit reports on (default: test).")]
    = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = "auto",
    output: OutputOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the discriminativeness plot (PNG) here.")]
    = None,
    show: Annotated[int, typer.Option("--show", help="List the N least discriminative descriptions.")] = 10,
) -> None:
    """Does a description set carry meaning? Real vs reassigned descriptions, WaffleCLIP, discriminativeness.

    Parameters as `-p NAME=VALUE` (descriptors, template, seeds, reassignment, weight_grid, oracle, truth);
    `zsclip methods show audit-descriptions` lists them. w is chosen on the dataset's validation split.
    """
    from ._io import check_output_paths
    from .audit import DescriptionAudit, plot_discriminativeness, summary_table
    from .context import RunContext
    from .datasets import get_dataset
    from .methods import parse_params
    from .pipeline import encoder_for

    def go() -> None:
        params = parse_params(DescriptionAudit, param or [])
        check_output_paths({"--output": output, "--plot": plot}, inputs=_file_inputs(params))
        audit = DescriptionAudit(**params)
        ds = get_dataset(dataset, dataset_root)
        encoder = encoder_for(ds, model, pretrained, device=device)
        record = audit.run(RunContext(ds, encoder, eval_split=split))
        table = Table(title=escape(f"description audit: {ds.name}/{record.dataset['split']} · "
                                   f"{record.results['descriptors']}"))
        table.add_column("")
        table.add_column("top-1 %", justify="right")
        for label, value in summary_table(record):
            table.add_row(escape(label), value)
        out.print(table)
        if show:
            worst = Table(title=f"the {show} least discriminative descriptions ({record.results['splits']['fit']} "
                                "split)")
            for col in ("class", "descriptor", "discriminativeness", "kind"):
                worst.add_column(col)
            for r in record.results["discriminativeness"][-show:][::-1]:
                worst.add_row(escape(r["class"]), escape(r["descriptor"]), f"{r['discriminativeness']:+.4f}",
                              r.get("kind", ""))
            out.print(worst)
        if output:
            record.write(output)
            out.print(f"record written to {output}", highlight=False, markup=False)
        if plot:
            plot_discriminativeness(record, plot)
            out.print(f"plot written to {plot}", highlight=False, markup=False)

    run_or_exit(go)


@methods_app.command("list")
def methods_list() -> None:
    """The registered methods, their kind and a one-line summary."""
    from .methods import describe_method, list_methods

    table = Table("method", "kind", "summary")
    for cls in sorted(list_methods(), key=lambda c: c.name):
        d = describe_method(cls.name)
        kind = d["kind"] + (f", randomised ({d['default_seeds']} seeds)" if d["randomised"] else "")
        table.add_row(cls.name, kind, escape(d["summary"]))
    out.print(table)


@methods_app.command("show")
def methods_show(name: Annotated[str, typer.Argument(help="A method name, or audit-descriptions.")]) -> None:
    """A method's parameters: default, allowed values and what each does (from the code)."""
    from .audit import DescriptionAudit
    from .methods import describe_method

    def go() -> None:
        d = describe_method(DescriptionAudit if name == DescriptionAudit.name else name)
        params, summary = d["parameters"], d["summary"]
        kind = d["kind"] + (f", randomised (default {d['default_seeds']} seeds, --seeds N)" if d["randomised"]
                            else "")
        out.print(f"[bold]{escape(name)}[/] ({kind}): {escape(' '.join(summary.split()))}")
        table = Table("parameter", "default", "allowed", "what it does")
        for p in params:
            table.add_row(p["name"], escape(repr(p["default"])), escape(p["constraint"]), escape(p["doc"]))
        out.print(table)
        out.print(f"set with: -p NAME=VALUE (e.g. zsclip classify -d DATASET -m {escape(name)} -p "
                  f"{params[0]['name'] if params else 'NAME'}=...)", highlight=False)

    run_or_exit(go)


@records_app.command("table")
def records_table_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder searched (recursively) for zsclip JSON records.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the table here.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="markdown, csv or parquet (default: from the "
                                     "output's suffix, else markdown).")] = "",
) -> None:
    """Collect every record under FOLDER into one table (one row per run)."""
    from .records import find_records, records_table, write_table

    def go() -> None:
        chosen = fmt or {".csv": "csv", ".parquet": "parquet"}.get(output.suffix if output else "", "markdown")
        found = find_records(folder)
        if not found:
            raise ZsclipError(f"no zsclip records (JSON with 'kind' and format 2) under {folder}")
        text = write_table(records_table(found, Path(folder)), output, chosen)
        if text is not None:
            out.print(text, highlight=False, markup=False)
        else:
            out.print(f"wrote {output}: {len(found)} records", highlight=False, markup=False)

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


@store_app.command("search")
def store_search(
    text: Annotated[list[str], typer.Argument(help="Text(s) to search for.")],
    store: Annotated[Path, typer.Option("--store", help="Image store folder.")],
    k: Annotated[int, typer.Option("-k", help="Nearest images per text.")] = 5,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
) -> None:
    """The store's images nearest to TEXT (its FAISS index; TEXT encoded by the model the store names)."""

    def go() -> None:
        from .store_search import search_store

        hits = search_store(text, store, k, device=device)
        if as_json:
            out.print_json(json.dumps(hits))
            return
        table = Table("query", "rank", "row", "score", "label", "path")
        for h in hits:
            table.add_row(escape(h["query"]), str(h["rank"]), str(h["row"]), f"{h['score']:.3f}", str(h["label"]),
                          escape(h["path"]))
        out.print(table)

    run_or_exit(go)


@store_app.command("list")
def store_list() -> None:
    """The image stores under the cache root ($ZSCLIP_HOME/stores): path, dataset, split, model, images."""
    from .paths import cache_root

    root = cache_root() / "stores"
    table = Table("store", "dataset/split", "model", "images", "dtype")
    for path in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
        try:
            m = json.loads(path.read_text())
            table.add_row(escape(str(path.parent)), escape(f"{m['dataset']['name']}/{m['split']}"),
                          escape(str(m["model"].get("model"))), str(m["count"]), str(m["dtype"]))
        except (OSError, ValueError, KeyError, TypeError):
            table.add_row(escape(str(path.parent)), "(unreadable manifest)", "", "", "")
    out.print(table)
    out.print(f"cache root: {root.parent}", highlight=False, markup=False)


@world_app.command("table")
def world_table(
    model: Annotated[str, typer.Option(help="Model to evaluate (default: the committed tiny CLIP).")] = "toyworld",
    write: Annotated[Path | None, typer.Option("--write", help="Also write the table as Markdown.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the numbers as JSON.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Measure the methods' claims in miniature: test top-1 per species tier, with the world's ceilings."""
    from ._io import write_bytes_atomic
    from .claims import claims_table, keep_sections, to_markdown

    def go() -> None:
        record = claims_table(model=model, device=device)
        markdown = to_markdown(record)
        out.print(markdown, highlight=False, markup=False)
        if json_out:
            record.write(json_out)
            out.print(f"wrote {json_out}", highlight=False, markup=False)
        if write:
            text = (f"# The toy world's table of claims\n\nTop-1 (%) on the `toyworld` test split "
                    f"({record.dataset['split']}, 30 sketch-style images per species), model `{model}` "
                    f"(fingerprint `{record.model['fingerprint']}`). Columns are the species' corpus tiers (species "
                    "count in brackets); seeded rows give mean ± std over seeds (np.std, ddof = 0). Regenerate "
                    "with `zsclip world table --write docs/toyworld.md --json docs/toyworld.json`.\n\n"
                    + markdown + "\n")
            old = write.read_text(encoding="utf-8") if write.exists() else ""
            write_bytes_atomic(write, keep_sections(text, old).encode())
            out.print(f"wrote {write}", highlight=False, markup=False)

    run_or_exit(go)


app.command("describe")(describe)
app.command("synonyms")(synonyms)
app.add_typer(search_app, name="search")
app.add_typer(corpus_app, name="corpus", help="Caption corpora (LAION shards, clip-retrieval folders): info, count.")
app.add_typer(world_app, name="world", help="The built-in offline toy world: generate, train, table, llm-serve.")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()
