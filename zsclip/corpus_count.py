"""Counting names in caption corpora exactly as REAL's SQLite FTS5 index does, in one pass over parquet.

REAL (METHODS §6) indexes every caption in an FTS5 table (after deleting quotes and reading ``-``/``_`` as
spaces) and runs one phrase query per name. zsclip gets the same numbers without an index:

- captions and names are tokenised like FTS5 ``unicode61`` (``zsclip.unicode61``); a name matches a
  caption when its tokens occur there adjacent and in order; a prefix word (EuroSAT's "satellite") must
  also occur anywhere in the caption;
- ``alternates[name]`` = captions matching the name; ``actual_freq`` = distinct captions matching any of
  the class's names;
- one pass over the captions whatever the number of names: ``PhraseMatcher`` maps tokens to ids of the
  names' vocabulary and walks a trie of the names' token sequences from every candidate position at once
  (vectorised with numpy); ASCII captions are tokenised on their raw UTF-8 bytes, the others through the
  exact per-code-point table;
- shards are counted in parallel processes; each shard's counts are saved (atomically) under a cache key
  of (shard file, size, mtime, names, prefix, normalisation version), so an interrupted count resumes and
  a repeated one reads nothing.

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

from ._io import read_json, write_json_atomic
from ._version import __version__
from .corpus import Corpus, Shard
from .errors import ZsclipError
from .paths import cache_root
from .unicode61 import EMPTY_CODE, NORMALISATION_VERSION, SEPARATOR_CODE, fold_table, normalise, tokenize

log = logging.getLogger(__name__)

COUNT_FORMAT = 1
#: ``bytes.translate`` table of the ASCII path: letters lower-cased, digits kept, all else a space
_ASCII_FOLD = bytes(b + 32 if 65 <= b <= 90 else b if (48 <= b <= 57 or 97 <= b <= 122) else 32 for b in range(256))


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

    ``phrases`` are distinct non-empty token tuples. Tokens are mapped to ids of the phrases' vocabulary
    (``-1`` elsewhere); a trie over the phrases' id sequences is walked from every position holding a
    phrase's first token, all positions at once, one depth per numpy step, staying inside one caption.
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
        self._vocab_array = pa.array(list(vocab), type=pa.large_string())
        self._vocab_small = self._vocab_array.cast(pa.string())
        lengths = [len(t.encode()) for t in vocab] or [0]
        self._min_bytes, self._max_bytes = min(lengths), max(lengths)
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
        width = max(1, len(vocab))
        self._width = width
        self._root = np.full(width, -1, dtype=np.int64)
        deeper = [(n * width + t, c) for (n, t), c in children.items() if n != 0]
        for (n, t), c in children.items():
            if n == 0:
                self._root[t] = c
        deeper.sort()
        self._edge_keys = np.array([k for k, _ in deeper], dtype=np.int64)
        self._edge_child = np.array([c for _, c in deeper], dtype=np.int64)
        self._node_phrase = np.array(node_phrase, dtype=np.int64)
        self._max_len = max((len(p) for p in self.phrases), default=0)

    # tokens ------------------------------------------------------------------------------------------
    def token_ids(self, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Vocabulary id (-1 outside it) and caption index of every token of ``captions``.

        The tokens of one caption are consecutive and in order. Null captions have no tokens. ASCII
        captions are tokenised on their UTF-8 bytes; the others on their code points through
        ``unicode61.fold_table``; both with numpy, a batch at a time.
        """
        if isinstance(captions, pa.ChunkedArray):
            captions = captions.combine_chunks()
        if not (pa.types.is_string(captions.type) or pa.types.is_large_string(captions.type)):
            captions = captions.cast(pa.large_string())
        if captions.null_count:
            captions = captions.fill_null("")
        if len(captions) == 0 or not self.vocab:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        ascii_rows = pc.string_is_ascii(captions).to_numpy(zero_copy_only=False)
        ids, rows = self._ascii_token_ids(captions)
        if ascii_rows.all():
            return ids, rows
        keep = ascii_rows[rows]
        other = np.flatnonzero(~ascii_rows)
        o_ids, o_rows = self._unicode_token_ids(captions.take(pa.array(other)))
        return np.concatenate([ids[keep], o_ids]), np.concatenate([rows[keep], other[o_rows]])

    def _ascii_token_ids(self, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Token ids read straight from the UTF-8 bytes (exact for ASCII captions).

        For ASCII text ``unicode61`` is: letters and digits are token characters, everything else
        separates, upper case folds to lower. Quotes are deleted first (REAL's normalisation). Bytes of
        non-ASCII captions are read too; the caller drops their tokens.
        """
        n = len(captions)
        buffers = captions.buffers()
        offset_type = np.int64 if pa.types.is_large_string(captions.type) else np.int32
        offsets = np.frombuffer(buffers[1], dtype=offset_type, count=n + 1,
                                offset=captions.offset * np.dtype(offset_type).itemsize).astype(np.int64)
        if buffers[2] is None or offsets[-1] == offsets[0]:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        # one C pass: letters to lower case, digits kept, quotes deleted, every other byte to a space
        raw = buffers[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()
        offsets = offsets - offsets[0]
        if raw.count(b"'") or raw.count(b'"'):
            codes = np.frombuffer(raw, dtype=np.uint8)
            offsets -= np.searchsorted(np.flatnonzero((codes == 39) | (codes == 34)), offsets)
        data = np.frombuffer(raw.translate(_ASCII_FOLD, b"'\""), dtype=np.uint8)
        return self._byte_token_ids(data, data != 0x20, offsets)

    def _unicode_token_ids(self, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of any captions: code points folded by ``fold_table``, then the byte path on UTF-8."""
        buffers = captions.buffers()
        offset_type = np.int64 if pa.types.is_large_string(captions.type) else np.int32
        offsets = np.frombuffer(buffers[1], dtype=offset_type, count=len(captions) + 1,
                                offset=captions.offset * np.dtype(offset_type).itemsize)
        if buffers[2] is None or offsets[-1] == offsets[0]:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        raw = buffers[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()
        joined = normalise(raw.decode("utf-8"))
        quotes = pc.add(pc.count_substring(captions, "'"), pc.count_substring(captions, '"'))
        lengths = pc.subtract(pc.utf8_length(captions), quotes).to_numpy(zero_copy_only=False).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        code = fold_table()[np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)]
        empty = np.flatnonzero(code == EMPTY_CODE)
        if len(empty):
            code = np.delete(code, empty)
            bounds -= np.searchsorted(empty, bounds)
        code[code == SEPARATOR_CODE] = 0x20
        data = np.frombuffer(code.tobytes().decode("utf-32-le").encode("utf-8"), dtype=np.uint8)
        width = 1 + (code >= 0x80).astype(np.int64) + (code >= 0x800) + (code >= 0x10000)
        byte_bounds = np.concatenate([[0], np.cumsum(width)])[bounds]
        return self._byte_token_ids(data, data != 0x20, byte_bounds)

    def _byte_token_ids(self, folded: np.ndarray, is_token: np.ndarray,
                        offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens = maximal runs of ``is_token`` bytes inside one caption (``offsets``: caption starts + end)."""
        n = len(offsets) - 1
        size = len(folded)
        first = is_token.copy()  # a token starts after a separator, or at a caption's first byte
        first[1:] &= ~is_token[:-1]
        at = offsets[:-1][offsets[:-1] < size]
        first[at] = is_token[at]
        last = is_token.copy()  # ... and ends before a separator, or at a caption's last byte
        last[:-1] &= ~is_token[1:]
        at = offsets[1:][offsets[1:] > 0] - 1
        last[at] = is_token[at]
        starts = np.flatnonzero(first)
        ends = np.flatnonzero(last) + 1
        # only tokens as long as some vocabulary token are looked up (in UTF-8 bytes)
        length = ends - starts
        looked = np.flatnonzero((length >= self._min_bytes) & (length <= self._max_bytes))
        # looked-up tokens interleaved with the (null) gaps between them: one string array over the bytes
        wide = size >= 2**31
        bounds = np.empty(2 * len(looked) + 1, dtype=np.int64 if wide else np.int32)
        bounds[0:-1:2] = starts[looked]
        bounds[1:-1:2] = ends[looked]
        bounds[-1] = size
        valid = np.full((len(bounds) + 6) // 8, 0x55, dtype=np.uint8)
        kind = pa.LargeStringArray if wide else pa.StringArray
        strings = kind.from_buffers(len(bounds) - 1, pa.py_buffer(bounds), pa.py_buffer(folded),
                                    pa.py_buffer(valid))
        vocab = self._vocab_array if wide else self._vocab_small
        found = pc.index_in(strings, value_set=vocab)
        ids = np.full(len(starts), -1, dtype=np.int64)
        ids[looked] = found.fill_null(-1).to_numpy(zero_copy_only=False)[0::2]
        per_row = np.diff(np.searchsorted(starts, offsets))
        rows = np.repeat(np.arange(n, dtype=np.int64), per_row)
        return ids, rows

    # matching ----------------------------------------------------------------------------------------
    def match(self, captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (phrase index, caption index) pairs of the phrases occurring in ``captions``."""
        ids, rows = self.token_ids(captions)
        return self.match_tokens(ids, rows, len(captions))

    def match_tokens(self, ids: np.ndarray, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """``match`` on tokens already mapped by ``token_ids``."""
        if not len(ids) or not self.phrases:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        n = len(ids)
        pos = np.flatnonzero(ids >= 0)
        state = self._root[ids[pos]]
        alive = state >= 0
        pos, state = pos[alive], state[alive]
        found_phrase: list[np.ndarray] = []
        found_row: list[np.ndarray] = []
        depth = 1
        while len(pos):
            phrase = self._node_phrase[state]
            hit = phrase >= 0
            if hit.any():
                found_phrase.append(phrase[hit])
                found_row.append(rows[pos[hit]])
            if depth >= self._max_len or not len(self._edge_keys):
                break
            nxt = pos + depth
            ok = nxt < n
            pos, state, nxt = pos[ok], state[ok], nxt[ok]
            tok = ids[nxt]
            ok = (tok >= 0) & (rows[nxt] == rows[pos])
            pos, state, tok = pos[ok], state[ok], tok[ok]
            key = state * self._width + tok
            at = np.minimum(np.searchsorted(self._edge_keys, key), len(self._edge_keys) - 1)
            ok = self._edge_keys[at] == key
            pos, state = pos[ok], self._edge_child[at[ok]]
            depth += 1
        if not found_phrase:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pairs = np.unique(np.concatenate(found_phrase) * max(1, n_rows) + np.concatenate(found_row))
        return pairs // max(1, n_rows), pairs % max(1, n_rows)


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
        """A digest of what decides the counts besides the captions (names, classes, prefix, tokenizer)."""
        blob = json.dumps({"phrases": self.phrases, "name_phrase": self.name_phrase,
                           "prefix": self.prefix_phrases, "normalisation": NORMALISATION_VERSION})
        return hashlib.sha256(blob.encode()).hexdigest()

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


def _init_worker(progress_queue: Any) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue


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
        matcher = PhraseMatcher(plan.phrases)
        if n_workers == 1:
            for i in todo:
                add(count_shard(corpus, i, plan, save_to, batch_rows, on_rows=advance, matcher=matcher))
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            progress_queue = ctx.Queue()
            with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(progress_queue,)) as pool:
                pending = {pool.submit(count_shard, corpus, i, plan, save_to, batch_rows, matcher=matcher)
                           for i in todo}
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

