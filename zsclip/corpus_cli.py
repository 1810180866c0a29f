"""The ``zsclip corpus`` commands: describe a caption corpus and count class names in it (REAL's counts).

Mounted in ``zsclip.cli`` as ``zsclip corpus ...``. A corpus is a folder read in place: raw LAION metadata
parquet shards or a clip-retrieval embedding folder (``zsclip.corpus``).
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .cli_common import ModelOpt, PretrainedOpt, err, out, run_or_exit
from .generate_cli import BaseUrlOpt, LLMOpt, MaxCallsOpt, MaxCostOpt, RefreshOpt, RetriesOpt, TimeoutOpt

app = typer.Typer(help="Caption corpora (LAION metadata shards, clip-retrieval folders): inspect, count names, "
                  "search.",
                  no_args_is_help=True)


class NsfwChoice(str, Enum):
    none = "none"
    nsfw = "nsfw"
    unsure = "unsure"


CorpusOpt = Annotated[Path, typer.Option("--corpus", help="Corpus folder: LAION metadata parquet shards, or a "
                                         "clip-retrieval folder (metadata/, img_emb/, text_emb/).")]
CaptionOpt = Annotated[str | None, typer.Option(
    "--caption-column", help="Caption column [default: TEXT for LAION metadata, caption for clip-retrieval].")]
PatternOpt = Annotated[str | None, typer.Option(
    "--pattern", help="Glob of the metadata shards [default: *.parquet, or metadata_*.parquet in metadata/].")]
NsfwOpt = Annotated[NsfwChoice, typer.Option(
    "--nsfw-filter", help="Drop rows whose NSFW column says NSFW (nsfw) or NSFW/UNSURE (unsure).")]


def _open(corpus: Path, caption_column: str | None, pattern: str | None, nsfw: NsfwChoice):
    from .corpus import Corpus

    return Corpus.open(corpus, caption_column=caption_column, pattern=pattern, nsfw_filter=nsfw.value)


@app.command()
def count(
    corpus: CorpusOpt,
    synonyms: Annotated[Path, typer.Option("--synonyms", help="REAL synonym or metrics JSON (`zsclip synonyms`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Metrics JSON to write (REAL's format).")],
    prefix: Annotated[str | None, typer.Option(
        "--prefix", help="Word(s) every matching caption must also contain, e.g. satellite for EuroSAT.")] = None,
    caption_column: CaptionOpt = None,
    pattern: PatternOpt = None,
    nsfw_filter: NsfwOpt = NsfwChoice.none,
    workers: Annotated[int | None, typer.Option(help="Processes counting shards [default: CPU count].")] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Folder of saved per-shard counts [default: <zsclip cache>/corpus-counts].")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse and save per-shard counts.")] = True,
) -> None:
    """Count every class's names in the captions, as REAL's FTS5 index does, and write REAL's metrics JSON.

    A name matches a caption when its words occur there adjacent and in order (case, accents, quotes
    and hyphens ignored as SQLite FTS5 unicode61 does; no stemming). Writes alternates (captions per
    name), actual_freq (distinct captions per class) and most_common_name, plus OUTPUT's
    .provenance.json (what was read, timings, classes without matches).
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def go() -> None:
        from ._io import write_json_atomic
        from .corpus_count import count_corpus, read_synonyms
        from .generate import provenance_path

        classes = read_synonyms(synonyms)
        opened = _open(corpus, caption_column, pattern, nsfw_filter)
        result = count_corpus(opened, classes, prefix=prefix, workers=workers, cache_dir=cache_dir, use_cache=cache)
        write_json_atomic(output, result.metrics())
        provenance = {**result.provenance(), "synonyms": str(synonyms)}
        write_json_atomic(provenance_path(output), provenance)
        rate = result.rows / result.seconds if result.shards_counted and result.seconds else 0
        out.print(f"{len(classes)} classes, {provenance['names']} names, {result.rows:,} captions "
                  f"({result.kept:,} kept) in {result.seconds:.1f} s"
                  + (f" ({rate:,.0f} captions/s)" if rate else "")
                  + (f"; {result.shards_cached} of {len(opened.shards)} shards from saved counts"
                     if result.shards_cached else ""))
        unmatched = result.unmatched_classes()
        if unmatched:
            shown = ", ".join(unmatched[:10]) + (f", ... ({len(unmatched)} in all)" if len(unmatched) > 10 else "")
            err.print(f"warning: {len(unmatched)} class(es) matched no caption (actual_freq 0): {shown}",
                      highlight=False)
        for key, name in result.plan.empty_names():
            err.print(f"warning: class {key}: name {name!r} has no letters or digits and matches nothing",
                      highlight=False)
        out.print(f"metrics: {output}")

    run_or_exit(go)


@app.command()
def info(
    corpus: CorpusOpt,
    caption_column: CaptionOpt = None,
    pattern: PatternOpt = None,
    nsfw_filter: NsfwOpt = NsfwChoice.none,
    manifest: Annotated[Path | None, typer.Option(help="Also write the corpus manifest (JSON) here.")] = None,
    examples: Annotated[int, typer.Option(help="Captions to show from the first shard.")] = 3,
) -> None:
    """Show a corpus's layout, shards, rows, columns and embeddings (checking their alignment)."""

    def go() -> None:
        opened = _open(corpus, caption_column, pattern, nsfw_filter)
        out.print(f"corpus: {opened.path} ({opened.layout}), {len(opened.shards)} shard(s), {opened.num_rows:,} rows")
        out.print(f"caption column: {opened.caption_column}; columns: {', '.join(opened.columns)}")
        for kind in ("image", "text"):
            if any((s.image_embeddings if kind == "image" else s.text_embeddings) for s in opened.shards):
                matrix = opened.embedding_file(0, kind)
                out.print(f"{kind} embeddings: {matrix.shape[1]}-d {matrix.dtype}, row-aligned with the metadata")
        table = Table()
        for col in ("shard", "rows", "img_emb", "text_emb"):
            table.add_column(col)
        for s in opened.shards[:20]:
            table.add_row(s.name, f"{s.rows:,}", s.image_embeddings.name if s.image_embeddings else "-",
                          s.text_embeddings.name if s.text_embeddings else "-")
        out.print(table)
        if len(opened.shards) > 20:
            out.print(f"... and {len(opened.shards) - 20} more shards")
        if examples > 0:
            batch = next(opened.batches(0, batch_rows=examples))
            for text in batch.captions.to_pylist()[:examples]:
                out.print(f"  {text!r}", highlight=False)
        if manifest:
            opened.write_manifest(manifest)
            out.print(f"manifest: {manifest}")

    run_or_exit(go)


@app.command()
def relevance(
    corpus: CorpusOpt,
    synonyms: Annotated[Path, typer.Option("--synonyms", help="REAL synonym or metrics JSON (`zsclip synonyms`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Relevance JSON to write.")],
    llm: LLMOpt = None,
    base_url: BaseUrlOpt = None,
    concept: Annotated[str, typer.Option(
        help="How the question names the class; {name} is its official name, e.g. 'the bird {name}'.")] = "{name}",
    prefix: Annotated[str | None, typer.Option(
        "--prefix", help="Word(s) every matching caption must also contain (as for `corpus count`).")] = None,
    min_judged: Annotated[int, typer.Option(help="Judge at least this many captions per class ...")] = 1000,
    min_yes: Annotated[int, typer.Option(help="... with at least this many yes answers ...")] = 200,
    max_judged: Annotated[int, typer.Option(help="... or stop at this many judged.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the order in which a class's captions are judged.")] = 0,
    caption_column: CaptionOpt = None,
    pattern: PatternOpt = None,
    nsfw_filter: NsfwOpt = NsfwChoice.none,
    max_calls: MaxCallsOpt = None,
    max_cost: MaxCostOpt = None,
    refresh: RefreshOpt = False,
    timeout: TimeoutOpt = 120.0,
    retries: RetriesOpt = 6,
) -> None:
    """REAL's relevance filter: ask an LLM whether sampled matching captions mean the class, estimate each
    class's relevant captions (yes-rate × actual_freq) and mark the tail (the 20% with the fewest).

    An answer counts as yes only when it is exactly "yes" (case and surrounding punctuation ignored). Every
    answer is cached: a budget stop (--max-calls, --max-cost) resumes when the command is run again.
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def go() -> None:
        from ._io import write_json_atomic
        from .corpus_count import read_synonyms
        from .generate_cli import _client
        from .relevance import judge_relevance, relevance_report

        classes = read_synonyms(synonyms)
        opened = _open(corpus, caption_column, pattern, nsfw_filter)
        with _client(llm, base_url, max_calls, max_cost, refresh, timeout, retries) as client:
            results = judge_relevance(opened, classes, client, concept=concept, prefix=prefix, seed=seed,
                                      min_judged=min_judged, min_yes=min_yes, max_judged=max_judged)
            line = client.accounting.summary()
            params = {"corpus": str(corpus), "synonyms": str(synonyms), "llm": client.model, "concept": concept,
                      "prefix": prefix, "seed": seed, "min_judged": min_judged, "min_yes": min_yes,
                      "max_judged": max_judged, "accounting": client.accounting.as_dict()}
        report = relevance_report(results, params)
        write_json_atomic(output, report)
        judged = sum(r.judged for r in results)
        failed = sum(r.failed for r in results)
        out.print(f"{len(results)} classes, {judged:,} captions judged"
                  + (f" ({failed} questions failed)" if failed else "") + f"; {line}", highlight=False)
        names = [report["classes"][k]["name"] for k in report["tail"]]
        out.print(f"tail ({len(names)} classes): {', '.join(names)}", highlight=False)
        out.print(f"relevance: {output}")

    run_or_exit(go)


class KindChoice(str, Enum):
    image = "image"
    text = "text"


@app.command()
def search(
    text: Annotated[list[str], typer.Argument(help="Text(s) to search for.")],
    corpus: CorpusOpt,
    k: Annotated[int, typer.Option("-k", help="Nearest rows per text.")] = 10,
    kind: Annotated[KindChoice, typer.Option(
        "--kind", help="Search the corpus images (img_emb) or its captions (text_emb).")] = KindChoice.image,
    index: Annotated[str, typer.Option(help="FAISS factory string of the index (built once, kept).")] = "Flat",
    model: ModelOpt = "toyworld",
    pretrained: PretrainedOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
) -> None:
    """The corpus rows nearest to TEXT by image or caption embedding (a FAISS index, built on first use).

    TEXT is encoded by the model that embedded the corpus (default: the toy world's).
    """

    def go() -> None:
        import json

        from .corpus_index import search_corpus
        from .models import load_model

        if k < 1:
            from .errors import ZsclipError

            raise ZsclipError(f"-k must be ≥ 1, got {k}")
        encoder = load_model(model or "toyworld", pretrained, device=device)
        hits = search_corpus(_open(corpus, None, None, NsfwChoice.none), text, encoder, k, kind.value, index)
        if as_json:
            out.print_json(json.dumps(hits))
            return
        table = Table()
        for col in ("query", "rank", "row", "score", "caption"):
            table.add_column(col)
        for h in hits:
            table.add_row(h["query"], str(h["rank"]), str(h["row"]), f"{h['score']:.3f}", h["caption"] or "")
        out.print(table)

    run_or_exit(go)
