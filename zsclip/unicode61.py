"""SQLite FTS5's ``unicode61`` tokenizer, reproduced in Python, and REAL's caption normalisation.

REAL (Parashar et al.) counts how often a name occurs in LAION captions with an SQLite FTS5 index built
with the default tokenizer, ``unicode61 remove_diacritics 1``. zsclip counts straight from parquet, so it
must split text exactly as that tokenizer does:

- every code point is on its own either a separator or a token character; tokens are maximal runs of
  token characters (letters, numbers and private-use characters in SQLite's Unicode 6.1 tables, and also
  every code point unassigned in Unicode 6.1 — so an emoji added later glues onto the word beside it);
- each token character is case-folded and, for Latin letters, stripped of its diacritic ("É" -> "e");
  combining accents fold to nothing ("e" + U+0301 -> "e"); there is no stemming.

The per-code-point table is derived from SQLite itself (``scan_sqlite``) and shipped in
``_unicode61_table.py``; a test holds the shipped table equal to the running SQLite's tokenizer.
Regenerate it with ``python -m zsclip.unicode61`` (about 10 s).

Before tokenising, REAL deletes ``'`` and ``"`` (so "don't" is one token, "dont") and reads ``-`` and ``_``
as spaces (``normalise``).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: bumped whenever ``normalise`` or ``tokenize`` change what they return (part of the count-cache key)
NORMALISATION_VERSION = 1

_SEPARATOR, _TOKEN, _EMPTY = "S", "T", "E"
_MAX_CODE_POINT = 0x110000


def normalise(text: str) -> str:
    """REAL's caption clean-up before indexing: delete ``"`` and ``'``, read ``-`` and ``_`` as spaces."""
    return text.replace('"', "").replace("'", "").replace("-", " ").replace("_", " ")


def _runs() -> list[tuple[int, int, str]]:
    """(first code point, last code point + 1, kind) of every run of the shipped table."""
    from ._unicode61_table import RUNS

    pairs = [(int(start, 16), kind) for start, kind in (r.split(":") for r in RUNS.split(","))]
    bounds = [start for start, _ in pairs[1:]] + [_MAX_CODE_POINT]
    return [(start, stop, kind) for (start, kind), stop in zip(pairs, bounds)]


@functools.lru_cache(maxsize=1)
def _splitter() -> re.Pattern[str]:
    """A pattern matching runs of separator code points."""
    ranges = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b - 1))}" if b - a > 1 else re.escape(chr(a))
                     for a, b, kind in _runs() if kind == _SEPARATOR)
    return re.compile(f"[{ranges}]+")


@functools.lru_cache(maxsize=1)
def _folds() -> dict[int, str]:
    """``str.translate`` table of the token characters that do not fold to themselves ("" for accents)."""
    from ._unicode61_table import FOLDS

    table = {int(cp, 16): chr(int(folded, 16)) for cp, folded in (p.split(":") for p in FOLDS.split(","))}
    for a, b, kind in _runs():
        if kind == _EMPTY:
            table.update(dict.fromkeys(range(a, b), ""))
    return table


#: ``code_table`` values that are not folded code points: a separator, and a character deleted before
#: tokenising (REAL's quotes) or folded to nothing (combining accents)
SEPARATOR_CODE = -1
SKIP_CODE = -2


@functools.lru_cache(maxsize=1)
def code_table() -> np.ndarray:
    """Every code point's fate in REAL's normalisation then ``unicode61``, as one ``int32`` array (4.4 MB).

    The folded code point of a token character, ``SEPARATOR_CODE`` for separators (``-`` and ``_`` among
    them), ``SKIP_CODE`` for ``'`` and ``"`` (deleted) and for token characters that fold to nothing. What
    ``tokenize`` does, as a table the compiled counter (``zsclip._count_kernel``) reads per code point.
    """
    table = np.arange(_MAX_CODE_POINT, dtype=np.int32)
    for a, b, kind in _runs():
        if kind == _SEPARATOR:
            table[a:b] = SEPARATOR_CODE
        elif kind == _EMPTY:
            table[a:b] = SKIP_CODE
    for cp, folded in _folds().items():
        if folded:
            table[cp] = ord(folded)
    table[[ord("'"), ord('"')]] = SKIP_CODE
    table[[ord("-"), ord("_")]] = SEPARATOR_CODE
    return table


def tokenize(text: str) -> list[str]:
    """The FTS5 ``unicode61`` tokens of REAL's normalised ``text`` (``normalise`` is applied here)."""
    folds = _folds()
    out = []
    for token in _splitter().split(normalise(text)):
        if token.isascii():
            if token:
                out.append(token.lower())
        else:
            token = token.translate(folds)
            if token:  # a token of accents only folds to nothing, and FTS5 skips it
                out.append(token)
    return out


def scan_sqlite(code_points: Iterable[int]) -> dict[int, str | None]:
    """What the running SQLite's FTS5 ``unicode61`` tokenizer makes of each code point.

    ``None`` for a separator, else the folded form ("" when the character folds to nothing). Each code
    point is indexed between two fixed ASCII words ("qq", "zz") and read back through ``fts5vocab``.
    """
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
        cps = [cp for cp in code_points if not 0xD800 <= cp < 0xE000]
        db.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", [(cp, f"qq{chr(cp)}zz") for cp in cps])
        terms: dict[int, list[str]] = {}
        for term, doc in db.execute("SELECT term, doc FROM v"):
            terms.setdefault(doc, []).append(term)
    finally:
        db.close()
    out: dict[int, str | None] = {}
    for cp in cps:
        found = sorted(terms.get(cp, []))
        if found == ["qq", "zz"]:
            out[cp] = None
        elif len(found) == 1 and found[0].startswith("qq") and found[0].endswith("zz"):
            out[cp] = found[0][2:-2]
        else:
            raise RuntimeError(f"unexpected unicode61 tokens for U+{cp:04X}: {found}")
    return out


def _table_source(scan: dict[int, str | None]) -> str:
    """The Python source of ``_unicode61_table.py`` for a full scan."""
    runs: list[str] = []
    folds: list[str] = []
    previous = None
    for cp in range(_MAX_CODE_POINT):
        folded = scan.get(cp)  # surrogates are absent: separators
        if folded is None:
            kind = _SEPARATOR
        elif folded == "":
            kind = _EMPTY
        else:
            kind = _TOKEN
            if folded != chr(cp):
                if len(folded) != 1:
                    raise RuntimeError(f"U+{cp:04X} folds to several characters: {folded!r}")
                folds.append(f"{cp:x}:{ord(folded):x}")
        if kind != previous:
            runs.append(f"{cp:x}:{kind}")
            previous = kind
    wrap = 100

    def chunks(items: list[str]) -> str:
        text = ",".join(items)
        return "\n".join(f"    {text[i:i + wrap]!r}" for i in range(0, len(text), wrap))

    return (
        '"""Generated by ``python -m zsclip.unicode61`` from SQLite '
        f'{sqlite3.sqlite_version}\'s FTS5 unicode61 tokenizer: do not edit.\n\n'
        "RUNS: ``start:kind`` (hex code point; S separator, T token character, E token character that folds\n"
        "to nothing), each run lasting until the next start. FOLDS: ``code point:folded code point`` (hex).\n"
        '"""\n\n'
        f"RUNS = (\n{chunks(runs)}\n)\n\nFOLDS = (\n{chunks(folds)}\n)\n"
    )


def main() -> None:
    """Regenerate ``_unicode61_table.py`` from the running SQLite."""
    target = Path(__file__).with_name("_unicode61_table.py")
    target.write_text(_table_source(scan_sqlite(range(_MAX_CODE_POINT))), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")


if __name__ == "__main__":
    main()
