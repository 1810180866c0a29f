"""The compiled counting kernel against a real SQLite FTS5 index: every kind of caption it reads byte by byte.

``zsclip.corpus_count.PhraseMatcher`` tokenises captions straight from their UTF-8 bytes (``_count_kernel``):
ASCII bytes through a table, other code points decoded and folded through the unicode61 table, tokens looked
up by hash and verified. These tests hold its counts equal to FTS5 (the authors' index, queried with a
correct phrase query) on captions mixing ASCII and non-ASCII rows, hyphens, apostrophes, quotes, digits,
punctuation inside names, combining accents, emoji and prefix words, and check the Arrow inputs it accepts
(slices, nulls, 32- and 64-bit offsets, chunked arrays) and its handling of invalid UTF-8 and hash collisions.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsclip import _count_kernel
from zsclip.corpus_count import ClassNames, PhraseMatcher, count_captions, count_names, phrase_of
from zsclip.unicode61 import tokenize


def fts_counts(captions: list[str | None], names: list[str], prefix: str | None = None) -> dict[str, int]:
    """Captions FTS5 finds per name: REAL's caption normalisation, default unicode61, one phrase query each.

    A name without a token cannot be queried (FTS5 raises): 0, as zsclip reports it.
    """
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE fts USING FTS5(TEXT)")
    rows = [(c.replace('"', "").replace("'", "").replace("-", " ").replace("_", " "),) for c in captions
            if c is not None]
    db.executemany("INSERT INTO fts (TEXT) VALUES (?)", rows)
    out = {}
    for name in names:
        cleaned = name.strip().lower().replace("'", "").replace('"', "").replace("-", " ").replace("_", " ")
        query = '"' + cleaned.replace('"', '""') + '"'
        if prefix is not None:
            query = f'"{prefix}" AND {query}'
        out[name] = len(db.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (query,)).fetchall()) \
            if tokenize(name) else 0
    db.close()
    return out


def fts_distinct(captions: list[str], names: list[str], prefix: str | None = None) -> int:
    """Distinct captions FTS5 finds for any of ``names`` (a class's ``actual_freq``)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE fts USING FTS5(TEXT)")
    db.executemany("INSERT INTO fts (TEXT) VALUES (?)",
                   [(c.replace('"', "").replace("'", "").replace("-", " ").replace("_", " "),) for c in captions])
    found: set[int] = set()
    for name in names:
        if not tokenize(name):
            continue
        query = '"' + name.lower().replace("'", "").replace('"', "").replace("-", " ").replace("_", " ") + '"'
        if prefix is not None:
            query = f'"{prefix}" AND {query}'
        found |= {r[0] for r in db.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (query,))}
    db.close()
    return len(found)


# ------------------------------------------------------------------------------------------------------------
# hand-picked captions: each kind of character the kernel treats differently
CAPTIONS = [
    "A Black-footed Albatross over the sea",          # upper case, hyphen
    "black_footed albatross",                        # underscore
    "the albatrosses' nest",                         # plural (no stemming), trailing apostrophe
    "Don't feed the O'Neil's parrot",                # apostrophes inside words are deleted
    'a "quoted" bird',                               # double quotes deleted
    "B-52 bomber and a 7up can, 2024",               # digits
    "AT&T tower; St. Louis at 5:00",                 # punctuation between tokens
    "x*y and c++ code (b)",                           # FTS5 operators in captions are plain separators
    "Crème Brûlée in Zürich, naïve CAFÉ",            # Latin letters with diacritics fold to ASCII
    "e\u0301te\u0301 in the garden",                 # combining accents fold to nothing
    "parrot🦜 and parrot 🐦 bird",                   # an emoji unassigned in Unicode 6.1 glues to the word
    "日本 の 鳥",                                     # CJK
    "ΣΊΣΥΦΟΣ σίσυφος ς",                             # Greek upper/lower/final sigma, tonos
    "ǅemal ǆ Ǆ",                                     # title-case digraph
    "İstanbul ısık",                                  # dotted capital I, dotless i
    "ｆｕｌｌ ｗｉｄｔｈ ２",                           # full-width letters and digits
    "albatrossalbatross albatros",                   # longer and shorter than a name token
    "satellite image of a black footed albatross",   # prefix word present
    "",
    "   --- ''' ",                                    # no token at all
    "straße strasse STRASSE",                         # ß is its own token character
]
NAMES = ["albatross", "black footed albatross", "black-footed albatross", "Black_Footed", "dont", "don't",
         "oneils parrot", "quoted", '"quoted"', "b 52", "b-52", "7up", "2024", "at&t", "at t", "st. louis",
         "5:00", "x*y", "c++", "(b)", "creme brulee", "crème brûlée", "zurich", "naive cafe", "ete", "été",
         "parrot🦜", "parrot", "bird", "日本", "σισυφος", "ΣΊΣΥΦΟΣ", "ς", "ǆemal", "ǆ", "istanbul", "ısık",
         "full width", "２", "2", "albatrossalbatross", "albatros", "satellite image", "strasse", "straße",
         "image of a", "&", "", "a"]


@pytest.mark.parametrize("prefix", [None, "satellite", "a"])
def test_handpicked_captions_count_like_fts5(prefix):
    classes = [ClassNames(str(i), n or "(empty)", [n]) for i, n in enumerate(NAMES)]
    result = count_captions(CAPTIONS, classes, prefix=prefix)
    expected = fts_counts(CAPTIONS, NAMES, prefix)
    got = {n: result.alternates(i)[n] for i, n in enumerate(NAMES)}
    assert got == expected
    assert sum(got.values()) > (15 if prefix is None else 3)  # the names do occur


def test_class_frequency_is_distinct_captions_like_fts5():
    names = ["albatross", "black footed albatross", "black-footed albatross", "parrot", "parrot🦜", "bird"]
    classes = [ClassNames("0", names[0], names[:3]), ClassNames("1", names[3], names[3:])]
    result = count_captions(CAPTIONS, classes)
    assert result.class_counts.tolist() == [fts_distinct(CAPTIONS, names[:3]), fts_distinct(CAPTIONS, names[3:])]


# ------------------------------------------------------------------------------------------------------------
# generated captions: random mixes of every character class, names cut out of the captions themselves
_PIECES = ["a", "b", "ab", "ba", "Ab", "AB", "x", "1", "2", "12", "é", "É", "e\u0301", "ü", "ß", "ǅ", "ı", "İ",
           "σ", "Σ", "ς", "日", "本", "🦜", "ａ", "２"]
_GLUE = [" ", " ", "  ", "-", "_", "'", '"', ",", ".", "&", ":", "*", "+", "(", ")", "/", "🐦", "\t", "—", ""]


@st.composite
def _caption(draw, max_pieces: int) -> str:
    pieces = draw(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=max_pieces))
    glue = draw(st.lists(st.sampled_from(_GLUE), min_size=len(pieces) + 1, max_size=len(pieces) + 1))
    return "".join(g + p for g, p in zip(glue, pieces)) + glue[-1]


@st.composite
def _corpus(draw) -> tuple[list[str], list[str]]:
    captions = draw(st.lists(_caption(10), min_size=1, max_size=25))
    names = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):  # a stretch of some caption: usually a real occurrence
            text = draw(st.sampled_from(captions))
            i = draw(st.integers(0, len(text)))
            names.append(text[i:i + draw(st.integers(1, 8))])
        else:
            names.append(draw(_caption(3)))
    return captions, list(dict.fromkeys(names))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_corpus(), prefix=st.sampled_from([None, "a", "ab", "1"]), ascii_only=st.booleans())
def test_property_kernel_counts_equal_fts5(data, prefix, ascii_only):
    captions, names = data
    if ascii_only:  # every row on the ASCII branch, names too
        captions = [c.encode("ascii", "ignore").decode() for c in captions]
        names = list(dict.fromkeys(n.encode("ascii", "ignore").decode() for n in names))
    classes = [ClassNames(str(i), n, [n]) for i, n in enumerate(names)]
    result = count_captions(captions, classes, prefix=prefix, batch_rows=7)
    assert {n: result.alternates(i)[n] for i, n in enumerate(names)} == fts_counts(captions, names, prefix)


# ------------------------------------------------------------------------------------------------------------
# the Arrow inputs the kernel reads in place
def test_arrow_layouts_and_nulls_count_the_same():
    captions = CAPTIONS * 3
    expected = count_names(captions, NAMES)
    assert expected == fts_counts(captions, NAMES)
    with_nulls = [None, *captions[:10], None, *captions[10:], None]
    for array in (pa.array(with_nulls, type=pa.string()), pa.array(with_nulls, type=pa.large_string()),
                  pa.chunked_array([pa.array(with_nulls[:9]), pa.array(with_nulls[9:])]),
                  pa.array(["junk", *with_nulls, "junk"]).slice(1, len(with_nulls))):
        assert count_names(array, NAMES, batch_rows=5) == expected
    # a null slot whose offsets still span bytes (Arrow allows it) reads as no text
    data = b"albatross"
    offsets = np.array([0, len(data)], dtype=np.int32)
    null_with_bytes = pa.StringArray.from_buffers(1, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data),
                                                  pa.py_buffer(bytes([0])), null_count=1)
    assert count_names(null_with_bytes, ["albatross"]) == {"albatross": 0}
    # non-string columns are read as text
    assert count_names(pa.array([2024, 7, 2024]), ["2024"]) == {"2024": 2}


def test_invalid_utf8_bytes_are_separators():
    """Bytes that are not UTF-8 separate tokens, as the U+FFFD a decoder puts in their place would.

    Among them: a sequence cut at a caption's end (the next caption's bytes do not complete it), overlong
    forms of "A", an encoded surrogate and a code point above U+10FFFF.
    """
    raw = [b"al\xffbatross albatross", b"albatross\xc3", b"\xe2\x82albatross", b"\xed\xa0\x80albatross",
           b"\xf4\x90\x80\x80x albatross\xc0\xaf", b"caf\xc3\xa9 albatross",
           b"albatross\xc3", b"\xa9 albatross", b"albatross\xe0\x81\x81", b"\xf0\x80\x81\x81albatross"]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in raw])]).astype(np.int32)
    array = pa.StringArray.from_buffers(len(raw), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(raw)))
    names = ["albatross", "al", "batross", "x albatross", "cafe albatross"]
    decoded = [r.decode("utf-8", "replace") for r in raw]
    assert count_names(array, names) == count_names(decoded, names) == fts_counts(decoded, names)


def test_hash_collision_never_makes_a_match():
    """A caption token whose hash equals a name token's is still compared code point by code point."""
    matcher = PhraseMatcher([phrase_of("albatross")])
    impostor = _count_kernel.token_hash("cormorant")  # as long as "albatross"
    matcher._slot_hash[:] = 0
    matcher._slot_id[:] = -1
    home = impostor & (len(matcher._slot_id) - 1)
    matcher._slot_hash[home], matcher._slot_id[home] = impostor, 0  # "albatross" filed under cormorant's hash
    matcher._token_filter[:] = 0xFF
    phrase, _ = matcher.match(pa.array(["a cormorant", "cormorant"]))
    assert phrase.size == 0
    matcher._slot_hash[home] = _count_kernel.token_hash("albatross")  # the same table, honest again
    matcher._slot_id[:] = -1
    matcher._slot_id[_count_kernel.token_hash("albatross") & (len(matcher._slot_id) - 1)] = 0
    matcher._slot_hash[_count_kernel.token_hash("albatross") & (len(matcher._slot_id) - 1)] = \
        _count_kernel.token_hash("albatross")
    assert matcher.match(pa.array(["a cormorant", "albatross"]))[1].tolist() == [1]


def test_code_table_is_the_tokenizer():
    """The kernel's per-code-point table says what ``tokenize`` (held equal to SQLite's) does to each code point."""
    from zsclip._unicode61_table import RUNS
    from zsclip.unicode61 import SEPARATOR_CODE, SKIP_CODE, code_table

    table = code_table()
    starts = [int(r.split(":")[0], 16) for r in RUNS.split(",")]
    rng = np.random.default_rng(0)
    sample = set(range(0x3000)) | {s + d for s in starts for d in (-1, 0, 1) if 0 <= s + d < 0x110000}
    sample |= set(rng.integers(0, 0x110000, 20000).tolist())
    for cp in sorted(sample):
        if 0xD800 <= cp < 0xE000:  # surrogates: not text (invalid UTF-8); separators in the table
            assert table[cp] == SEPARATOR_CODE
            continue
        code = int(table[cp])
        expected = (["qq", "zz"] if code == SEPARATOR_CODE else ["qqzz"] if code == SKIP_CODE
                    else [f"qq{chr(code)}zz"])
        assert tokenize(f"qq{chr(cp)}zz") == expected, hex(cp)
