"""Counting names in caption corpora exactly as REAL's SQLite FTS5 index does, in one pass over parquet.

REAL (METHODS §6) indexes every caption in an FTS5 table (after deleting quotes and reading ``-``/``_`` as
spaces) and runs one phrase query per name. zsclip gets the same numbers without an index:

- captions and names are tokenised like FTS5 ``unicode61`` (``zsclip.unicode61``); a name matches a
  caption when its tokens occur there adjacent and in order; a prefix word (EuroSAT's "satellite") must
  also occur anywhere in the caption;
- ``alternates[name]`` = captions matching the name; ``actual_freq`` = distinct captions matching any of
  the class's names;
- one pass over the captions whatever the number of names: ``PhraseMatcher`` hands the captions' UTF-8
  bytes, as Arrow holds them, to a compiled kernel (``zsclip._count_kernel``) that folds every code point
  through the exact unicode61 table, looks tokens up in a hash table of the names' tokens and walks a trie
  of the names' token sequences, reading each byte once;
- shards are counted in parallel processes (forked after the kernel is loaded, so they share it); each
  shard's counts are saved (atomically) under a cache key of (shard file, size, mtime, names, prefix,
  normalisation version), so an interrupted count resumes and a repeated one reads nothing.

Names the authors' query loses (an FTS5 syntax error on ``&``, ``:``, ``*``, ``,`` ..., swallowed by their
code) are counted like any other name here; a name with no token at all ("&") matches nothing and is
reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue as queue_module
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _count_kernel
from ._io import read_json, write_json_atomic
from ._version import __version__
from .corpus import Corpus, Shard
from .errors import ZsclipError
from .paths import cache_root
from .unicode61 import NORMALISATION_VERSION, code_table, tokenize

log = logging.getLogger(__name__)

COUNT_FORMAT = 1


# --------------------------------------------------------------------------------------------------------
# synonym files
@dataclass
class ClassNames:
    """One class of a synonym / metrics file: its key ("0"), official name and every name to count."""

    key: str
    name: str
    names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def read_synonyms(path: str | Path) -> list[ClassNames]:
    """Read a REAL synonym file or metrics file, in file order.

    ``{"0": {"name": official, "alternates": {synonym: count or null}, "most_common_name": ..., ...}}`` —
    what ``zsclip synonyms`` writes and what REAL's ``metrics-LAION400M.json`` files hold. The official
    name is counted too (added when it is not among the alternates, as REAL's cleaning does).
    """
    path = Path(path)
    data = read_json(path, "synonym file")
    if not isinstance(data, dict) or not data:
        raise ZsclipError(f"synonym file {path}: expected a JSON object {{\"0\": {{\"name\": ..., \"alternates\": "
                          "{...}}, ...}} with at least one class")
    out: list[ClassNames] = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ZsclipError(f"synonym file {path}, class {key!r}: expected an object with a \"name\" string")
        alternates = entry.get("alternates", {})
        if isinstance(alternates, list):
            names = [str(a) for a in alternates]
        elif isinstance(alternates, dict):
            names = [str(a) for a in alternates]
        else:
            raise ZsclipError(f"synonym file {path}, class {key!r}: \"alternates\" must be an object "
                              f"{{name: count}} or a list, got {type(alternates).__name__}")
        if entry["name"] not in names:
            names.insert(0, entry["name"])
        extra = {k: v for k, v in entry.items() if k not in ("name", "alternates", "most_common_name", "actual_freq")}
        out.append(ClassNames(str(key), entry["name"], list(dict.fromkeys(names)), extra))
    return out


def classes_from_mapping(per_class: Mapping[str, Sequence[str]]) -> list[ClassNames]:
    """``{official name: [synonyms]}`` as classes keyed "0", "1", ... (the official name counted too)."""
    return [ClassNames(str(i), name, list(dict.fromkeys([name, *syns])))
            for i, (name, syns) in enumerate(per_class.items())]


def phrase_of(name: str) -> tuple[str, ...]:
    """The token sequence a name is matched as (REAL's name clean-up, then ``unicode61``)."""
    return tuple(tokenize(name.strip().lower()))


# --------------------------------------------------------------------------------------------------------
# matching
class PhraseMatcher:
    """Finds, in one pass over a batch of captions, every (phrase, caption) pair where the phrase occurs.

    ``phrases`` are distinct non-empty token tuples (``phrase_of``). The compiled kernel
    (``zsclip._count_kernel.match_captions``) reads the captions' UTF-8 bytes once: it folds each code point
    through ``unicode61.code_table``, looks each token up in a hash table of the phrases' tokens (verified
    code point by code point) and walks a trie of the phrases' token sequences inside each caption.
    """

    def __init__(self, phrases: Sequence[tuple[str, ...]]) -> None:
        self.phrases = [tuple(p) for p in phrases]
        if any(not p for p in self.phrases):
            raise ValueError("phrases must have at least one token")
        if len(set(self.phrases)) != len(self.phrases):
            raise ValueError("phrases must be distinct")
        vocab: dict[str, int] = {}
        for p in self.phrases:
            for t in p:
                vocab.setdefault(t, len(vocab))
        self.vocab = vocab
        self._vocab_tables(list(vocab))
        self._trie(vocab)
        self._code_table = code_table()
        self.match(pa.array([""], type=pa.large_string()))  # compile (or load) the kernel before any fork

    def _vocab_tables(self, tokens: list[str]) -> None:
        """The tokens' code points (CSR), an open-addressing table of their hashes (at most half full), and
        the kernel's bit filter of those hashes."""
        codes = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.int64) for t in tokens]
        self._vocab_ptr = np.concatenate([[0], np.cumsum([len(c) for c in codes])]).astype(np.int64)
        self._vocab_codes = np.concatenate(codes) if codes else np.empty(0, np.int64)
        self._max_token = max((len(c) for c in codes), default=0)
        hashes = [_count_kernel.token_hash(t) for t in tokens]
        size = 1 << max(4, (2 * len(tokens)).bit_length())
        self._slot_hash = np.zeros(size, dtype=np.uint64)
        self._slot_id = np.full(size, -1, dtype=np.int32)
        for vid, h in enumerate(hashes):
            slot = h & (size - 1)
            while self._slot_id[slot] >= 0:
                slot = (slot + 1) & (size - 1)
            self._slot_hash[slot], self._slot_id[slot] = h, vid
        self._token_filter = _count_kernel.token_filter(hashes)

    def _trie(self, vocab: Mapping[str, int]) -> None:
        """A trie over the phrases' token-id sequences: ``root[token]``, children in CSR sorted by token."""
        children: dict[tuple[int, int], int] = {}
        node_phrase = [-1]
        for pid, p in enumerate(self.phrases):
            node = 0
            for t in p:
                key = (node, vocab[t])
                child = children.get(key)
                if child is None:
                    child = children[key] = len(node_phrase)
                    node_phrase.append(-1)
                node = child
            node_phrase[node] = pid
        self._root = np.full(max(1, len(vocab)), -1, dtype=np.int32)
        edges = sorted((n, t, c) for (n, t), c in children.items() if n != 0)
        for (n, t), c in children.items():
            if n == 0:
                self._root[t] = c
        self._child_ptr = np.searchsorted(np.array([n for n, _, _ in edges], dtype=np.int64),
                                          np.arange(len(node_phrase) + 1)).astype(np.int64)
        self._child_tok = np.array([t for _, t, _ in edges], dtype=np.int32)
        self._child_node = np.array([c for _, _, c in edges], dtype=np.int32)
        self._node_phrase = np.array(node_phrase, dtype=np.int32)

    def match(self, captions: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (phrase index, caption index) pairs of the phrases occurring in ``captions``, in caption order.

        Null captions match nothing. The captions' Arrow buffers are read in place (no copy of the text).
        """
        if isinstance(captions, pa.ChunkedArray):
            captions = captions.combine_chunks()
        if not (pa.types.is_string(captions.type) or pa.types.is_large_string(captions.type)):
            captions = captions.cast(pa.large_string())
        n = len(captions)
        if n == 0 or not self.phrases:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        _, offsets_buffer, data_buffer = captions.buffers()
        offset_type = np.int64 if pa.types.is_large_string(captions.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, dtype=offset_type, count=n + 1,
                                offset=captions.offset * np.dtype(offset_type).itemsize).astype(np.int64)
        data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
        if captions.null_count:
            valid = pc.is_valid(captions).to_numpy(zero_copy_only=False)
        else:
            valid = np.ones(n, dtype=np.bool_)
        return _count_kernel.match_captions(
            data, offsets, valid, self._code_table, self._token_filter, self._slot_hash, self._slot_id,
            self._vocab_codes, self._vocab_ptr, self._max_token, self._root, self._child_ptr, self._child_tok,
            self._child_node, self._node_phrase, len(self.phrases))


def count_names(captions: Iterable[str] | pa.Array, names: Iterable[str],
                batch_rows: int = 65_536) -> dict[str, int]:
    """For each name, the number of ``captions`` it matches (REAL's FTS5 phrase semantics), in memory."""
    names = list(dict.fromkeys(names))
    phrase_ids, phrases = _phrase_table(names)
    matcher = PhraseMatcher(phrases)
    counts = np.zeros(len(phrases), dtype=np.int64)
    array = _as_array(captions)
    for start in range(0, len(array), batch_rows):
        found, _ = matcher.match(array.slice(start, batch_rows))
        counts += np.bincount(found, minlength=len(phrases))
    return {n: int(counts[p]) if p >= 0 else 0 for n, p in zip(names, phrase_ids)}


def _phrase_table(names: Sequence[str]) -> tuple[list[int], list[tuple[str, ...]]]:
    """Phrase index of each name (-1 for a name without tokens) and the distinct phrases."""
    index: dict[tuple[str, ...], int] = {}
    out: list[int] = []
    for name in names:
        p = phrase_of(name)
        out.append(index.setdefault(p, len(index)) if p else -1)
    return out, list(index)


# --------------------------------------------------------------------------------------------------------
# counting a corpus
@dataclass
class CountPlan:
    """What to count: the classes' names as distinct phrases, and the prefix words every match needs."""

    classes: list[ClassNames]
    prefix: str | None
    phrases: list[tuple[str, ...]]
    name_phrase: list[list[int]]  # per class, per name: phrase index or -1
    prefix_phrases: list[int]
    class_ptr: np.ndarray  # CSR: phrase -> classes
    class_idx: np.ndarray
    _names_hash: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, classes: Sequence[ClassNames], prefix: str | None = None) -> CountPlan:
        """Plan the count of ``classes``; ``prefix`` words (whitespace-separated) must each occur too."""
        if not classes:
            raise ZsclipError("no classes to count")
        index: dict[tuple[str, ...], int] = {}
        name_phrase = []
        for c in classes:
            row = []
            for name in c.names:
                p = phrase_of(name)
                row.append(index.setdefault(p, len(index)) if p else -1)
            name_phrase.append(row)
        prefix_phrases = []
        for word in (prefix or "").split():
            p = phrase_of(word)
            if not p:
                raise ZsclipError(f"prefix word {word!r} has no letters or digits to match")
            prefix_phrases.append(index.setdefault(p, len(index)))
        phrases = list(index)
        pairs = sorted({(p, ci) for ci, row in enumerate(name_phrase) for p in row if p >= 0})
        ptr = np.zeros(len(phrases) + 1, dtype=np.int64)
        for p, _ in pairs:
            ptr[p + 1] += 1
        return cls(list(classes), prefix, phrases, name_phrase, prefix_phrases, np.cumsum(ptr),
                   np.array([ci for _, ci in pairs], dtype=np.int64))

    def names_hash(self) -> str:
        """A digest of what decides the counts besides the captions (names, classes, prefix, tokenizer).

        Computed once per plan (every shard's cache key holds it).
        """
        if self._names_hash is None:
            blob = json.dumps({"phrases": self.phrases, "name_phrase": self.name_phrase,
                               "prefix": self.prefix_phrases, "normalisation": NORMALISATION_VERSION})
            self._names_hash = hashlib.sha256(blob.encode()).hexdigest()
        return self._names_hash

    def empty_names(self) -> list[tuple[str, str]]:
        """(class key, name) of names without a single token: they can match nothing."""
        return [(c.key, n) for c, row in zip(self.classes, self.name_phrase) for n, p in zip(c.names, row) if p < 0]


@dataclass
class ShardCounts:
    """Counts of one shard: rows read, rows kept by the NSFW filter, per-phrase and per-class captions."""

    rows: int
    kept: int
    phrase_counts: np.ndarray
    class_counts: np.ndarray
    seconds: float = 0.0


def _count_batch(matcher: PhraseMatcher, plan: CountPlan, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(phrase counts, class counts) of one batch of captions."""
    n_rows = len(captions)
    phrase, row = matcher.match(captions)
    if plan.prefix_phrases:
        ok = np.ones(n_rows, dtype=bool)
        for p in plan.prefix_phrases:
            has = np.zeros(n_rows, dtype=bool)
            has[row[phrase == p]] = True
            ok &= has
        keep = ok[row]
        phrase, row = phrase[keep], row[keep]
    phrase_counts = np.bincount(phrase, minlength=len(plan.phrases))
    per = plan.class_ptr[phrase + 1] - plan.class_ptr[phrase]
    cls_of = plan.class_idx[np.repeat(plan.class_ptr[phrase], per) + _ranges(per)]
    cls_rows = np.unique(cls_of * max(1, n_rows) + np.repeat(row, per)) // max(1, n_rows)
    return phrase_counts, np.bincount(cls_rows, minlength=len(plan.classes))


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(k) for k in lengths])`` without a Python loop."""
    total = int(lengths.sum())
    if not total:
        return np.empty(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def shard_cache_key(corpus: Corpus, shard: Shard, plan: CountPlan) -> dict[str, Any]:
    """What a shard's saved counts depend on; its digest names the cache file."""
    st = shard.path.stat()
    return {"format": COUNT_FORMAT, "shard": str(shard.path.resolve()), "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns, "caption_column": corpus.caption_column, "nsfw_filter": corpus.nsfw_filter,
            "names": plan.names_hash(), "prefix": plan.prefix or "", "normalisation": NORMALISATION_VERSION}


def _cache_file(cache_dir: Path, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / f"{digest}.json"


def _load_cached(path: Path, key: Mapping[str, Any], plan: CountPlan) -> ShardCounts | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable count cache file %s", path)
        return None
    if data.get("key") != dict(key) or len(data.get("phrase_counts", ())) != len(plan.phrases):
        return None
    return ShardCounts(data["rows"], data["kept"], np.array(data["phrase_counts"], dtype=np.int64),
                       np.array(data["class_counts"], dtype=np.int64), data.get("seconds", 0.0))


_PROGRESS_QUEUE: Any = None
_WORKER_JOB: tuple[Corpus, CountPlan, PhraseMatcher, Path | None, int] | None = None


def _init_worker(progress_queue: Any, job: tuple[Corpus, CountPlan, PhraseMatcher, Path | None, int]) -> None:
    """A counting process's state, set once: forked processes inherit it without pickling (nor recompiling)."""
    global _PROGRESS_QUEUE, _WORKER_JOB
    _PROGRESS_QUEUE, _WORKER_JOB = progress_queue, job


def _count_shard_in_worker(shard_index: int) -> ShardCounts:
    assert _WORKER_JOB is not None
    corpus, plan, matcher, cache_dir, batch_rows = _WORKER_JOB
    return count_shard(corpus, shard_index, plan, cache_dir, batch_rows, matcher=matcher)


def count_shard(corpus: Corpus, shard_index: int, plan: CountPlan, cache_dir: Path | None,
                batch_rows: int = 65_536, on_rows: Callable[[int], None] | None = None,
                matcher: PhraseMatcher | None = None) -> ShardCounts:
    """Count one shard (streaming its row groups) and save the result under ``cache_dir`` atomically.

    ``matcher``: ``PhraseMatcher(plan.phrases)``, built here when not given.
    """
    shard = corpus.shards[shard_index]
    started = time.perf_counter()
    matcher = matcher or PhraseMatcher(plan.phrases)
    phrase_counts = np.zeros(len(plan.phrases), dtype=np.int64)
    class_counts = np.zeros(len(plan.classes), dtype=np.int64)
    rows = kept = 0
    for batch in corpus.batches(shard, batch_rows):
        pcounts, ccounts = _count_batch(matcher, plan, batch.captions)
        phrase_counts += pcounts
        class_counts += ccounts
        rows += batch.rows
        kept += batch.kept
        if on_rows is not None:
            on_rows(batch.rows)
        elif _PROGRESS_QUEUE is not None:
            _PROGRESS_QUEUE.put(batch.rows)
    result = ShardCounts(rows, kept, phrase_counts, class_counts, time.perf_counter() - started)
    if cache_dir is not None:
        key = shard_cache_key(corpus, shard, plan)
        write_json_atomic(_cache_file(cache_dir, key), {
            "key": key, "rows": rows, "kept": kept, "phrase_counts": phrase_counts.tolist(),
            "class_counts": class_counts.tolist(), "seconds": result.seconds})
    return result


@dataclass
class CountResult:
    """The counts of a whole corpus, per class and name, with what was read."""

    plan: CountPlan
    corpus: Corpus | None
    phrase_counts: np.ndarray
    class_counts: np.ndarray
    rows: int
    kept: int
    shards_counted: int
    shards_cached: int
    seconds: float

    def alternates(self, class_index: int) -> dict[str, int]:
        """``{name: matching captions}`` of one class, in the class's name order."""
        c = self.plan.classes[class_index]
        return {n: int(self.phrase_counts[p]) if p >= 0 else 0
                for n, p in zip(c.names, self.plan.name_phrase[class_index])}

    def metrics(self) -> dict[str, dict[str, Any]]:
        """The counts in REAL's metrics format.

        ``{"0": {"name", "alternates": {name: count}, "most_common_name", "actual_freq", ...}}``:
        ``most_common_name`` is the most frequent name (ties: the official name, then the first listed);
        REAL-Prompt applies its word-set rule on top of the counts. Other fields of the input are kept.
        """
        out: dict[str, dict[str, Any]] = {}
        for i, c in enumerate(self.plan.classes):
            alternates = self.alternates(i)
            best = max(alternates, key=lambda n: (alternates[n], n == c.name)) if alternates else c.name
            out[c.key] = {"name": c.name, "alternates": alternates, "most_common_name": best,
                          "actual_freq": int(self.class_counts[i]), **c.extra}
        return out

    def unmatched_classes(self) -> list[str]:
        """Official names of the classes no caption matched (``actual_freq`` 0)."""
        return [c.name for c, n in zip(self.plan.classes, self.class_counts) if n == 0]

    def provenance(self) -> dict[str, Any]:
        """What the count read and how: corpus manifest, prefix, timings, names that cannot match."""
        return {"zsclip_version": __version__, "kind": "caption-count", "prefix": self.plan.prefix,
                "normalisation": NORMALISATION_VERSION, "tokenizer": "sqlite fts5 unicode61 remove_diacritics 1",
                "captions_read": self.rows, "captions_kept": self.kept, "shards_counted": self.shards_counted,
                "shards_from_cache": self.shards_cached, "seconds": round(self.seconds, 3),
                "classes": len(self.plan.classes), "names": sum(len(c.names) for c in self.plan.classes),
                "classes_without_matches": self.unmatched_classes(),
                "names_without_tokens": [{"class": k, "name": n} for k, n in self.plan.empty_names()],
                "corpus": self.corpus.manifest() if self.corpus is not None else None}


def count_captions(captions: Iterable[str] | pa.Array, classes: Sequence[ClassNames], prefix: str | None = None,
                   batch_rows: int = 65_536) -> CountResult:
    """``count_corpus`` on captions held in memory (no corpus folder, no cache)."""
    started = time.perf_counter()
    plan = CountPlan.build(classes, prefix)
    matcher = PhraseMatcher(plan.phrases)
    array = _as_array(captions)
    phrase_counts = np.zeros(len(plan.phrases), dtype=np.int64)
    class_counts = np.zeros(len(plan.classes), dtype=np.int64)
    for start in range(0, len(array), batch_rows):
        pcounts, ccounts = _count_batch(matcher, plan, array.slice(start, batch_rows))
        phrase_counts += pcounts
        class_counts += ccounts
    return CountResult(plan, None, phrase_counts, class_counts, len(array), len(array), 0, 0,
                       time.perf_counter() - started)


def _as_array(captions: Iterable[str] | pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if isinstance(captions, pa.Array | pa.ChunkedArray):
        return captions
    return pa.array(list(captions), type=pa.large_string())


def default_cache_dir() -> Path:
    """Where per-shard counts are saved: ``<zsclip cache>/corpus-counts``."""
    return cache_root() / "corpus-counts"


def count_corpus(corpus: Corpus, classes: Sequence[ClassNames], prefix: str | None = None,
                 workers: int | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
                 batch_rows: int = 65_536, progress: bool = True) -> CountResult:
    """Count every class's names in ``corpus``: one pass over the captions, shards in parallel processes.

    ``workers``: processes (default: CPU count, at most one per shard to count). Shards whose counts are
    saved under ``cache_dir`` (default ``default_cache_dir()``) for the same names, prefix and shard file
    are not read again; ``use_cache=False`` neither reads nor writes saved counts.
    """
    plan = CountPlan.build(classes, prefix)
    for key, name in plan.empty_names():
        log.warning("class %s: name %r has no letters or digits; it matches no caption", key, name)
    started = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    phrase_counts = np.zeros(len(plan.phrases), dtype=np.int64)
    class_counts = np.zeros(len(plan.classes), dtype=np.int64)
    rows = kept = 0
    todo: list[int] = []
    cached = 0
    for shard in corpus.shards:
        key = shard_cache_key(corpus, shard, plan)
        saved = _load_cached(_cache_file(cache, key), key, plan) if use_cache else None
        if saved is None:
            todo.append(shard.index)
            continue
        cached += 1
        phrase_counts += saved.phrase_counts
        class_counts += saved.class_counts
        rows += saved.rows
        kept += saved.kept
    if cached:
        log.info("%d of %d shards counted before (cache %s)", cached, len(corpus.shards), cache)

    def add(result: ShardCounts) -> None:
        nonlocal rows, kept, phrase_counts, class_counts
        phrase_counts += result.phrase_counts
        class_counts += result.class_counts
        rows += result.rows
        kept += result.kept

    total = sum(corpus.shards[i].rows for i in todo)
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    from .progress import progress_bar

    with progress_bar("counting names in captions", total if progress else 0, unit="captions") as advance:
        save_to = cache if use_cache else None
        # built (its kernel compiled or loaded) once, only when there is something to count, before any fork
        matcher = PhraseMatcher(plan.phrases) if todo else None
        if matcher is not None and n_workers == 1:
            for i in todo:
                add(count_shard(corpus, i, plan, save_to, batch_rows, on_rows=advance, matcher=matcher))
        elif matcher is not None:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            progress_queue = ctx.Queue()
            with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(progress_queue, (corpus, plan, matcher, save_to, batch_rows))) as pool:
                pending = {pool.submit(_count_shard_in_worker, i) for i in todo}
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(progress_queue, advance)
                    for future in done:
                        add(future.result())
                _drain(progress_queue, advance)
    seconds = time.perf_counter() - started
    if todo:
        log.info("counted %d names of %d classes in %d captions (%d shards) in %.1f s (%.0f captions/s)",
                 sum(len(c.names) for c in plan.classes), len(plan.classes), total, len(todo), seconds,
                 total / max(seconds, 1e-9))
    return CountResult(plan, corpus, phrase_counts, class_counts, rows, kept, len(todo), cached, seconds)


def _drain(progress_queue: Any, advance: Callable[[int], None]) -> None:
    while True:
        try:
            advance(progress_queue.get_nowait())
        except queue_module.Empty:
            return


def match_rows(corpus: Corpus, classes: Sequence[ClassNames], prefix: str | None = None,
               batch_rows: int = 65_536) -> list[dict[str, np.ndarray]]:
    """Per class, the global rows of the captions each of its names matches (for retrieval).

    ``[{name: sorted global rows}]`` in class order; memory grows with the number of matches, not with
    the corpus. The same semantics as ``count_corpus`` (prefix words included).
    """
    plan = CountPlan.build(classes, prefix)
    matcher = PhraseMatcher(plan.phrases)
    found: list[list[np.ndarray]] = [[] for _ in plan.phrases]
    for shard in corpus.shards:
        for batch in corpus.batches(shard, batch_rows):
            phrase, row = matcher.match(batch.captions)
            if plan.prefix_phrases:
                ok = np.ones(batch.rows, dtype=bool)
                for p in plan.prefix_phrases:
                    has = np.zeros(batch.rows, dtype=bool)
                    has[row[phrase == p]] = True
                    ok &= has
                phrase, row = phrase[ok[row]], row[ok[row]]
            rows = corpus.global_rows(shard.index, batch.start + row)
            order = np.argsort(phrase, kind="stable")
            phrase, rows = phrase[order], rows[order]
            cuts = np.searchsorted(phrase, np.arange(len(plan.phrases) + 1))
            for p in np.unique(phrase):
                found[p].append(rows[cuts[p]:cuts[p + 1]])
    merged = [np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64) for parts in found]
    return [{n: (merged[p] if p >= 0 else np.empty(0, np.int64)) for n, p in zip(c.names, row)}
            for c, row in zip(plan.classes, plan.name_phrase)]

