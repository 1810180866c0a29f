"""Benchmark: counting class names in a caption corpus — zsclip's one pass vs REAL's SQLite FTS5 index.

Generated LAION-like metadata shards (default 1,200,000 captions in 4 parquet shards, column ``TEXT``) and
1,000 classes × ~5 names (1–3 words). Captions are Zipf-distributed words; 12% of them carry a class name
(classes Zipf-distributed too), some are capitalised, hyphenated, carry apostrophes or accented words.

* floor — a bare read of the caption column of every shard (``pyarrow.parquet.read_table``): the I/O and
  decoding cost any method pays;
* zsclip — ``count_corpus``: one pass, shards in 2 processes (``--workers``), no saved counts, then once more
  with the saved per-shard counts (which reads nothing); and the same count in 1 process. Its time includes
  numba's start-up and loading the compiled kernel from numba's on-disk cache (a "startup" part, run first
  in its own process, times that and compiles the kernel if the cache is cold); importing
  ``zsclip.corpus_count`` happens before the clock starts and is printed separately;
* FTS5 — the authors' approach (NeglectedTailsVLM ``laion_parser.py``): per shard, read the parquet,
  normalise the captions in Python, insert them into an on-disk FTS5 table; then one phrase query per
  name and shard (``SELECT rowid, text ... MATCH 'a + b' ORDER BY RANK``, their query), in 2 threads;
  ``actual_freq`` from the distinct (shard, rowid) pairs of a class. Their ``to_sql`` copy of the whole
  parquet into the database is left out (it only makes FTS5 slower).

Each part runs in its own process (so does the generation), so "peak RSS" is that process's own (or its
workers') peak resident memory, and "CPU s" its user + system time with its workers'. Counts are compared
name by name and class by class (zsclip in 2 and in 1 process against FTS5); the run fails if any differs.
The load average before and after is printed: on a shared machine, compare ratios of one run, not seconds.

    python benchmarks/bench_counting.py                      # full size (a few minutes on 2 cores)
    python benchmarks/bench_counting.py --captions 200000 --classes 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SYLLABLES = ["ka", "lo", "mi", "ten", "ra", "vu", "sel", "dor", "pa", "ni", "qua", "zen", "bri", "tho", "fle",
             "mar", "gu", "sha", "pel", "oxi", "ru", "ven", "li", "ta", "cor", "dam", "es", "fi", "ho", "ju"]
ACCENTED = ["café", "naïve", "crème", "brûlée", "Zürich", "señor", "façade", "über"]


def make_words(rng: np.random.Generator, n: int, syllables: tuple[int, int]) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        k = rng.integers(syllables[0], syllables[1] + 1)
        out.add("".join(rng.choice(SYLLABLES, size=k)))
    return sorted(out)


def make_classes(rng: np.random.Generator, n_classes: int) -> dict[str, list[str]]:
    """``{official name: [synonyms]}``: 2-word official names, 1–3-word synonyms sharing some words."""
    words = make_words(rng, 3 * n_classes + 500, (3, 4))
    rng.shuffle(words)
    genus = words[:n_classes // 5]
    pool = words[n_classes // 5:]
    classes: dict[str, list[str]] = {}
    k = 0
    for i in range(n_classes):
        official = f"{pool[k]} {genus[i % len(genus)]}"
        k += 1
        syns = [pool[k]]
        k += 1
        syns.append(f"{pool[k]} {pool[k - 1]}")
        syns.append(f"little {pool[k - 2]} {genus[(i + 1) % len(genus)]}")
        syns.append(f"{genus[i % len(genus)]} {pool[(k + 7) % len(pool)]}")
        k += 1
        classes[official] = syns
    return classes


def make_captions(rng: np.random.Generator, n: int, classes: dict[str, list[str]]) -> list[str]:
    vocab = make_words(rng, 30_000, (2, 4)) + ["a", "the", "of", "in", "photo", "with", "and", "on", "for"]
    ranks = np.arange(1, len(vocab) + 1)
    p = 1 / ranks
    p /= p.sum()
    lengths = rng.integers(4, 16, size=n)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    names = [name for official, syns in classes.items() for name in (official, *syns)]
    per_class = 1 + len(next(iter(classes.values())))
    class_p = 1 / np.arange(1, len(classes) + 1) ** 1.1
    class_p /= class_p.sum()
    named = rng.random(n) < 0.12
    picks = rng.choice(len(classes), size=n, p=class_p) * per_class + rng.integers(0, per_class, size=n)
    style = rng.random(n)
    out = []
    pos = 0
    for i in range(n):
        ws = [vocab[w] for w in words[pos:pos + lengths[i]]]
        pos += lengths[i]
        if named[i]:
            ws.insert(int(rng.integers(0, len(ws) + 1)), names[picks[i]])
        s = style[i]
        if s < 0.10:
            ws[0] = ws[0].capitalize()
        elif s < 0.14:
            ws.append(ACCENTED[i % len(ACCENTED)])
        elif s < 0.19:
            ws[-1] = ws[-1] + "'s"
        text = " ".join(ws)
        if 0.19 <= s < 0.24:
            text = text.replace(" ", "-", 2)
        out.append(text)
    return out


def generate(folder: Path, n_captions: int, n_classes: int, shards: int, seed: int) -> None:
    marker = folder / "params.json"
    params = {"captions": n_captions, "classes": n_classes, "shards": shards, "seed": seed, "version": 1}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(seed)
    classes = make_classes(rng, n_classes)
    synonyms = {str(i): {"name": c, "alternates": {s: None for s in [c, *syns]}, "most_common_name": c}
                for i, (c, syns) in enumerate(classes.items())}
    (folder / "synonyms.json").write_text(json.dumps(synonyms))
    per_shard = -(-n_captions // shards)
    for k in range(shards):
        n = min(per_shard, n_captions - k * per_shard)
        captions = make_captions(rng, n, classes)
        table = pa.table({"URL": [f"https://example.org/{k}/{i}.jpg" for i in range(n)], "TEXT": captions,
                          "NSFW": ["UNLIKELY"] * n})
        pq.write_table(table, folder / f"part-{k:05d}.snappy.parquet", compression="snappy")
    marker.write_text(json.dumps(params))


# --------------------------------------------------------------------------------------------------------
# the three parts, each run in its own process
def run_floor(folder: Path) -> dict:
    t0 = time.perf_counter()
    rows = nbytes = 0
    for path in sorted(folder.glob("*.parquet")):
        col = pq.read_table(path, columns=["TEXT"]).column("TEXT")
        rows += len(col)
        nbytes += pc.sum(pc.binary_length(col)).as_py() or 0
    return {"seconds": time.perf_counter() - t0, "rows": rows, "text_bytes": nbytes}


def run_startup() -> dict:
    """zsclip's fixed costs, in a fresh process: importing the counter, then numba's start-up and the load of
    the compiled kernel from its on-disk cache (what the first ``PhraseMatcher`` of a process pays; compiling
    it when the cache is cold)."""
    t0 = time.perf_counter()
    from zsclip._count_kernel import match_captions
    from zsclip.corpus_count import PhraseMatcher

    t1 = time.perf_counter()
    PhraseMatcher([("warm",)])
    return {"import_seconds": t1 - t0, "kernel_seconds": time.perf_counter() - t1,
            "compiled": bool(match_captions.stats.cache_misses)}


def run_zsclip(folder: Path, workers: int) -> dict:
    """``count_corpus`` from scratch (numba start-up and kernel load included), then again from saved counts."""
    from zsclip.corpus import Corpus
    from zsclip.corpus_count import count_corpus, read_synonyms

    classes = read_synonyms(folder / "synonyms.json")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cpu0 = cpu_seconds()
        result = count_corpus(Corpus.open(folder), classes, workers=workers, cache_dir=cache, progress=False)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        t1 = time.perf_counter()
        again = count_corpus(Corpus.open(folder), classes, workers=workers, cache_dir=cache, progress=False)
        cached_seconds = time.perf_counter() - t1
    assert again.shards_counted == 0 and again.metrics() == result.metrics()
    metrics = result.metrics()
    return {"seconds": seconds, "count_cpu_seconds": cpu, "cached_seconds": cached_seconds,
            "alternates": {k: v["alternates"] for k, v in metrics.items()},
            "actual_freq": {k: v["actual_freq"] for k, v in metrics.items()}}


def _authors_clean(text: str) -> str:
    return text.strip().replace("'", "").replace('"', "").replace("-", " ").replace("_", " ").replace("  ", " ").lower()


def run_fts(folder: Path, threads: int) -> dict:
    import sqlite3

    synonyms = json.loads((folder / "synonyms.json").read_text())
    shards = sorted(folder.glob("*.parquet"))
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "LAION.db"
        t0 = time.perf_counter()
        db = sqlite3.connect(db_path)
        for k, path in enumerate(shards):
            texts = pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist()
            norm = [(t.replace('"', "").replace("'", "").replace("-", " ").replace("_", " ") if t else "N.A.",)
                    for t in texts]
            db.execute(f"CREATE VIRTUAL TABLE _fts{k} USING FTS5(TEXT)")
            db.executemany(f"INSERT INTO _fts{k} (TEXT) values(?)", norm)
            db.commit()
        db.close()
        build_seconds = time.perf_counter() - t0
        db_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())

        def per_class(item: tuple[str, dict]) -> tuple[str, dict, int]:
            key, entry = item
            conn = sqlite3.connect(db_path)
            seen: set[tuple[int, int]] = set()
            counts = {}
            for name in entry["alternates"]:
                query = _authors_clean(_authors_clean(name)).replace(" ", " + ")
                n = 0
                for k in range(len(shards)):
                    rows = conn.execute(f"select rowid, text from _fts{k} where _fts{k} MATCH ? ORDER BY RANK",
                                        (query,)).fetchall()
                    n += len(rows)
                    seen.update((k, r[0]) for r in rows)
                counts[name] = n
            conn.close()
            return key, counts, len(seen)

        t1 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(per_class, synonyms.items()))
        query_seconds = time.perf_counter() - t1
    return {"seconds": build_seconds + query_seconds, "build_seconds": build_seconds, "query_seconds": query_seconds,
            "db_bytes": db_bytes, "alternates": {k: c for k, c, _ in results},
            "actual_freq": {k: f for k, _, f in results}}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its (finished) workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=1_200_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="zsclip processes / FTS5 query threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "zsclip-bench-counting",
                        help="folder for the generated shards (reused when the parameters match)")
    parser.add_argument("--part", choices=["generate", "startup", "floor", "zsclip", "fts"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part == "generate":  # in its own process, so that the parts' peak memory does not include it
        generate(args.data, args.captions, args.classes, args.shards, args.seed)
        return
    if args.part:
        run = {"startup": run_startup, "floor": lambda: run_floor(args.data),
               "zsclip": lambda: run_zsclip(args.data, args.workers),
               "fts": lambda: run_fts(args.data, args.workers)}[args.part]
        if args.part == "zsclip":
            import zsclip.corpus_count  # noqa: F401  (import time is not counting time)
        cpu0 = cpu_seconds()
        out = run()
        out["peak_rss_mb"] = peak_rss_mb()
        out["cpu_seconds"] = cpu_seconds() - cpu0
        args.result.write_text(json.dumps(out))
        return

    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--part", "generate", "--data", str(args.data), "--captions",
                    str(args.captions), "--classes", str(args.classes), "--shards", str(args.shards), "--seed",
                    str(args.seed)], check=True)
    print(f"data: {args.data} ({args.captions:,} captions, {args.shards} shards, {args.classes} classes; "
          f"generated/checked in {time.perf_counter() - t0:.0f} s)")
    load = os.getloadavg()
    results = {}
    parts = [("startup", 1), ("floor", 1), ("zsclip", args.workers), ("zsclip", 1), ("fts", args.workers)]
    with tempfile.TemporaryDirectory() as tmp:
        for part, workers in parts:
            path = Path(tmp) / f"{part}.json"
            subprocess.run([sys.executable, __file__, "--part", part, "--result", str(path), "--data", str(args.data),
                            "--workers", str(workers)], check=True)
            results[part if part != "zsclip" else f"zsclip{workers}"] = json.loads(path.read_text())
    load_after = os.getloadavg()
    startup, floor, fts = results["startup"], results["floor"], results["fts"]
    ours, one = results[f"zsclip{args.workers}"], results["zsclip1"]
    names = sum(len(v) for v in ours["alternates"].values())
    for label, part in ((f"{args.workers} processes", ours), ("1 process", one)):
        assert part["alternates"] == fts["alternates"], f"zsclip ({label}) and FTS5: per-name counts differ"
        assert part["actual_freq"] == fts["actual_freq"], f"zsclip ({label}) and FTS5: per-class actual_freq differs"
    matched = sum(sum(v.values()) for v in ours["alternates"].values())
    rows, mb = floor["rows"], floor["text_bytes"] / 1e6
    parquet_mb = sum(p.stat().st_size for p in args.data.glob("*.parquet")) / 1e6
    print(f"{rows:,} captions ({mb:.0f} MB of text, {parquet_mb:.0f} MB parquet), {args.classes} classes, "
          f"{names:,} names, {matched:,} name matches; counts equal (every name's count and every class's "
          "actual_freq, zsclip with 2 and with 1 process vs FTS5): yes")
    print(f"{'':40}{'seconds':>9}{'captions/s':>14}{'MB/s':>9}{'CPU s':>8}{'peak RSS MB':>13}")

    def row(label: str, seconds: float, cpu: float | None = None, rss: float | None = None) -> None:
        extra = f"{cpu:8.1f}" if cpu is not None else f"{'':8}"
        extra += f"{rss:13.0f}" if rss is not None else ""
        print(f"{label:40}{seconds:9.2f}{rows / seconds:14,.0f}{mb / seconds:9.1f}{extra}")

    row("bare read of TEXT (I/O floor)", floor["seconds"], floor["cpu_seconds"], floor["peak_rss_mb"])
    row(f"zsclip count, {args.workers} processes", ours["seconds"], ours["count_cpu_seconds"], ours["peak_rss_mb"])
    row("zsclip count, 1 process", one["seconds"], one["count_cpu_seconds"], one["peak_rss_mb"])
    row("zsclip count again (saved counts)", ours["cached_seconds"])
    row("FTS5: build index", fts["build_seconds"])
    row(f"FTS5: {names:,} queries ({args.workers} threads)", fts["query_seconds"])
    row("FTS5: total", fts["seconds"], fts["cpu_seconds"], fts["peak_rss_mb"])
    how = "compiled now (its on-disk cache was cold)" if startup["compiled"] else "loaded from its on-disk cache"
    print(f"zsclip's counts include numba's start-up and its kernel, {how}: {startup['kernel_seconds']:.2f} s in a "
          f"fresh process; not included: importing zsclip.corpus_count, {startup['import_seconds']:.2f} s")
    print(f"speed-up, end to end: {fts['seconds'] / ours['seconds']:.1f}x wall ({args.workers} processes), "
          f"{fts['seconds'] / one['seconds']:.1f}x wall (1 process), "
          f"{fts['seconds'] / (ours['seconds'] + startup['import_seconds']):.1f}x wall with the import; "
          f"{fts['cpu_seconds'] / ours['count_cpu_seconds']:.1f}x CPU time; zsclip / floor: "
          f"{ours['seconds'] / floor['seconds']:.1f}x; FTS5 database: {fts['db_bytes'] / 1e6:.0f} MB "
          f"({fts['db_bytes'] / 1e6 / parquet_mb:.1f}x the parquet)")
    print(f"load average (1 min) before / after: {load[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
