"""The toy world's pretraining corpus: long-tailed image-caption pairs stored as parquet, plus name counts.

Each row is one individual: its caption, species, the attributes it shows, its rendering style and the render
seed from which ``render.render`` redraws the image, so the corpus is a few MB on disk. Captions mix names,
attribute phrases and style words ("a sketch of a striped vorlick on sand"); how often a species appears and
how it is named follows its tier in ``spec.TIERS``. Like web captions, a share of them
(``P_RELATIVE_CLAUSE``) put the attributes in a relative clause after the noun ("krell vorlick, which is
small and red"), and some captions that name no species carry a word seen only once before the noun
(``P_ONE_OFF_WORD``, "a zorblat vorlick, which has dark stripes"), as local names and usernames do on the
web. Caption wording shares its vocabulary with the LLM-like descriptors of ``spec.descriptors`` but not
their sentences. ``synonym_counts`` counts names in captions the way REAL
counts them in LAION captions (case-insensitive whole-phrase matches), and ``real_synonyms`` writes the
result in REAL's metrics format.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._io import atomic_path
from ..errors import ZsclipError
from .spec import ATTRIBUTES, CORPUS_STYLE_WEIGHTS, TIERS, World, _make_words, _unit, instance_attributes

log = logging.getLogger(__name__)

#: render seeds of corpus rows are their row index; evaluation images use seeds from this offset upward
CORPUS_SEED_LIMIT = 1_000_000_000

_STYLE_PHRASES: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of", "a close-up photo of", "a picture of"),
    "painting": ("a painting of", "an oil painting of"),
    "cartoon": ("a cartoon of", "a cartoon drawing of"),
    "pixel": ("pixel art of", "a pixel art image of"),
    "sketch": ("a sketch of", "a pencil sketch of"),
}
#: chance a caption states its style (photos often go without saying)
_P_STYLE = {"photo": 0.55, "painting": 0.85, "cartoon": 0.85, "pixel": 0.85, "sketch": 0.85}
_GENERIC_NOUNS = ("creature", "animal", "critter", "beast")
_P_GENUS_WORD = 0.35
_P_RARE_SYNONYM = 0.05
#: share of captions written with a relative clause ("a sketch of a vorlick, which has dark stripes")
P_RELATIVE_CLAUSE = 0.3
#: verbs that introduce a habitat phrase inside a relative clause ("which lives on sand")
_HABITAT_VERBS = ("lives", "is found", "is usually seen")
#: share of captions that name no species but put a one-off word before the noun ("a zorblat vorlick"),
#: as web captions carry words seen once (local names, usernames, misspellings): they teach the text
#: tower that an unfamiliar name says little and the attribute phrases around it say more
P_ONE_OFF_WORD = 0.3

def _article(phrase: str) -> str:
    """The indefinite article for ``phrase`` ("an oval", "a one-eyed")."""
    return "an" if phrase[0] in "aeiou" and not phrase.startswith("one") else "a"


# attribute value -> adjective forms (before the noun)
_ADJ: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {},
    "pattern": {"plain": ("plain",), "striped": ("striped",), "spotted": ("spotted",),
                "checkered": ("checkered",)},
    "shape": {"round": ("round",), "oval": ("oval",), "long": ("long",), "triangular": ("triangular",),
              "boxy": ("boxy",), "diamond": ("diamond-shaped",)},
    "part": {"crest": ("crested",), "horns": ("horned",), "wings": ("winged",)},
    "eyes": {"one": ("one-eyed",), "two": ("two-eyed",), "three": ("three-eyed",)},
    "size": {"small": ("small", "tiny"), "medium": ("medium-sized",), "large": ("large", "big")},
}
# attribute value -> noun-phrase forms (after "with" or "it has")
_NP: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {},
    "pattern": {"plain": ("plain skin", "no markings"), "striped": ("stripes", "dark stripes"),
                "spotted": ("spots", "round spots"), "checkered": ("a checkered pattern", "checkered skin")},
    "shape": {s: (f"{_article(w)} {w} body",) for s, w in (("round", "round"), ("oval", "oval"), ("long", "long"),
                                                ("triangular", "triangular"), ("boxy", "boxy"),
                                                ("diamond", "diamond-shaped"))},
    "part": {"crest": ("a crest", "a spiky crest"), "tail": ("a long tail", "a curled tail"),
             "horns": ("horns", "two horns"), "antennae": ("antennae", "two antennae"),
             "wings": ("wings", "small wings"), "ring": ("a halo ring", "a ring above its head")},
    "eyes": {"one": ("one eye", "a single eye"), "two": ("two eyes",), "three": ("three eyes",)},
    "size": {},
}
_HABITAT_PHRASES = {
    "sand": ("on sand", "in the desert", "on the sand"),
    "grass": ("on grass", "in a meadow", "in the grass"),
    "water": ("in water", "in a lake", "swimming in water"),
    "snow": ("in the snow", "on snow"),
    "rocks": ("on rocks", "among rocks"),
    "sky": ("in the sky", "flying in the sky"),
}
_ATTR_WEIGHTS = {"colour": 3.0, "pattern": 2.5, "part": 2.0, "shape": 1.5, "habitat": 1.5, "eyes": 1.2,
                 "size": 1.0}


def _colour_forms(colour: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (colour,), (f"{colour} skin", f"{_article(colour)} {colour} body")


def _one_off_word(world: World, species_index: int, render_seed: int) -> str:
    """A made-up word for one caption, built like the world's names but never one of its names' words."""
    taken = {w for s in world.species for n in (s.name, *s.synonyms) for w in n.split()}
    return _make_words(_unit("one-off-word", world.seed, species_index, render_seed), 1, taken)[0]


def _pick_attributes(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct attribute keys, the salient ones (colour, pattern) more likely."""
    keys = list(ATTRIBUTES)
    chosen: list[str] = []
    while len(chosen) < n:
        k = rng.choices(keys, weights=[_ATTR_WEIGHTS[k] for k in keys])[0]
        keys.remove(k)
        chosen.append(k)
    return chosen


def _relative_caption(rng: random.Random, noun: str, named: bool, attrs: dict[str, str], style: str) -> str:
    """A caption whose attributes follow the noun in a relative clause, as web captions often put them.

    "a sketch of a vorlick, which has dark stripes and three eyes", "krell vorlick, which is small and red",
    "a photo of a creature, which lives on sand". Phrasing comes from the same vocabularies as the other
    captions (``_ADJ``, ``_NP``, ``_HABITAT_PHRASES``); one attribute of an unnamed individual may stay
    before the noun ("a striped creature, which has three eyes").
    """
    chosen = _pick_attributes(rng, rng.choice((1, 1, 2, 2, 3) if named else (1, 2, 2, 3, 3)))
    is_forms: list[str] = []
    has_forms: list[str] = []
    habitat = ""
    for key in chosen:
        value = attrs[key]
        if key == "habitat":
            habitat = f"{rng.choice(_HABITAT_VERBS)} {rng.choice(_HABITAT_PHRASES[value])}"
            continue
        adj_forms, np_forms = (_colour_forms(value) if key == "colour"
                               else (_ADJ[key].get(value, ()), _NP[key].get(value, ())))
        if adj_forms and (not np_forms or rng.random() < 0.45):
            is_forms.append(rng.choice(adj_forms))
        else:
            has_forms.append(rng.choice(np_forms))
    prenominal = ""
    if not named and is_forms and (has_forms or habitat or len(is_forms) > 1) and rng.random() < 0.3:
        prenominal = is_forms.pop(0)
    parts = []
    if has_forms:
        parts.append("has " + " and ".join(has_forms))
    if is_forms:
        parts.append("is " + " and ".join(is_forms))
    if habitat:
        parts.append(habitat)
    rng.shuffle(parts)
    clause = "which " + (" and ".join(parts) if len(parts) < 3 else f"{parts[0]}, {parts[1]} and {parts[2]}")
    head = f"{prenominal} {noun}" if prenominal else noun
    if rng.random() < _P_STYLE[style]:
        phrase = f"{rng.choice(_STYLE_PHRASES[style])} {_article(head)} {head}"
    elif rng.random() < 0.5:
        phrase = f"{_article(head)} {head}"
    else:
        phrase = head
    return f"{phrase}, {clause}"


def make_caption(world: World, species_index: int, attrs: dict[str, str], style: str,
                 render_seed: int) -> tuple[str, str]:
    """The caption of one corpus row and the name it uses ("" when it names no species).

    Deterministic in (world seed, species, render seed). The species' tier decides whether and how it is
    named; the rest of the caption is a random choice of attribute phrases that are true of ``attrs``.
    """
    sp = world.species[species_index]
    plan = TIERS[sp.tier]
    rng = _unit("caption", world.seed, species_index, render_seed)
    name = ""
    if rng.random() < plan["p_named"]:
        if sp.nickname and rng.random() < plan.get("p_nickname", 0.0):
            name = sp.nickname
        elif sp.rare_synonyms and rng.random() < _P_RARE_SYNONYM:
            name = rng.choice(sp.rare_synonyms)
        else:
            name = sp.name
    if name:
        n_attr = rng.choice((0, 1, 1, 2, 3))
        noun = name
    else:
        n_attr = rng.choice((2, 3, 3, 4))
        noun = sp.genus_word if rng.random() < _P_GENUS_WORD else rng.choice(_GENERIC_NOUNS)

    if not name and _unit("one-off", world.seed, species_index, render_seed).random() < P_ONE_OFF_WORD:
        noun = f"{_one_off_word(world, species_index, render_seed)} {noun}"

    clause_rng = _unit("clause", world.seed, species_index, render_seed)
    if clause_rng.random() < P_RELATIVE_CLAUSE:
        return _relative_caption(clause_rng, noun, bool(name), attrs, style), name

    chosen = _pick_attributes(rng, n_attr)
    adjs: list[str] = []
    nps: list[str] = []
    habitat = ""
    for key in chosen:
        value = attrs[key]
        if key == "habitat":
            habitat = rng.choice(_HABITAT_PHRASES[value])
            continue
        adj_forms, np_forms = (_colour_forms(value) if key == "colour"
                               else (_ADJ[key].get(value, ()), _NP[key].get(value, ())))
        if adj_forms and (not np_forms or rng.random() < 0.55):
            adjs.append(rng.choice(adj_forms))
        else:
            nps.append(rng.choice(np_forms))
    order = {"small": 0, "tiny": 0, "large": 0, "big": 0, "medium-sized": 0}
    adjs.sort(key=lambda a: order.get(a, 1))

    head = " ".join([*adjs, noun])
    phrase = f"{_article(head)} {head}"
    if rng.random() < _P_STYLE[style]:
        phrase = f"{rng.choice(_STYLE_PHRASES[style])} {phrase}"
    sentence_form = nps and rng.random() < 0.3
    if nps and not sentence_form:
        phrase += " with " + " and ".join(nps)
    if habitat:
        phrase += f" {habitat}"
    if sentence_form:
        phrase += ". it has " + " and ".join(nps)
    return phrase, name


def build_corpus(world: World, scale: float = 1.0) -> pa.Table:
    """The corpus of ``world`` as an arrow table; ``scale`` multiplies every species' image count.

    Columns: caption, species (label), name_used, attributes (JSON of the individual's attributes), style,
    render_seed (= row index, unique). Rows are shuffled deterministically so that species are mixed.
    """
    rows: list[tuple[int, int]] = []
    for sp in world.species:
        lo, hi = TIERS[sp.tier]["images"]
        n = max(1, round(_unit("count", world.seed, sp.index).randint(lo, hi) * scale))
        rows += [(sp.index, k) for k in range(n)]
    _unit("shuffle", world.seed).shuffle(rows)
    if len(rows) >= CORPUS_SEED_LIMIT:
        raise ZsclipError(f"corpus too large ({len(rows)} rows); lower --scale")
    styles, weights = zip(*CORPUS_STYLE_WEIGHTS.items(), strict=True)
    cols: dict[str, list[Any]] = {k: [] for k in ("caption", "species", "name_used", "attributes", "style",
                                                   "render_seed")}
    for seed, (sid, _) in enumerate(rows):
        style = _unit("style", world.seed, seed).choices(styles, weights=weights)[0]
        attrs = instance_attributes(world, sid, seed)
        caption, name = make_caption(world, sid, attrs, style, seed)
        cols["caption"].append(caption)
        cols["species"].append(sid)
        cols["name_used"].append(name)
        cols["attributes"].append(json.dumps(attrs, sort_keys=True))
        cols["style"].append(style)
        cols["render_seed"].append(seed)
    schema = pa.schema([("caption", pa.string()), ("species", pa.int32()), ("name_used", pa.string()),
                        ("attributes", pa.string()), ("style", pa.string()), ("render_seed", pa.int64())])
    table = pa.table(cols, schema=schema)
    meta = {"zsclip.world_seed": str(world.seed), "zsclip.scale": str(scale)}
    return table.replace_schema_metadata(meta)


def write_corpus(table: pa.Table, path: str | Path) -> Path:
    """Write the corpus table to ``path`` as parquet, atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    log.info("wrote %d captions to %s", table.num_rows, path)
    return path


def read_corpus(path: str | Path) -> pa.Table:
    """Read a corpus parquet written by ``write_corpus`` (raises ``ZsclipError`` when it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise ZsclipError(f"toy-world corpus not found: {path}. Run `zsclip world generate` first.")
    return pq.read_table(path)


_WORD = re.compile(r"[a-z0-9]+")


def _normalise(text: str) -> list[str]:
    """Caption words as REAL counts them: lower case, quotes dropped, '-' and '_' read as spaces."""
    return _WORD.findall(text.lower().replace("'", "").replace('"', "").replace("-", " ").replace("_", " "))


def synonym_counts(captions: Iterable[str], phrases: Iterable[str]) -> dict[str, int]:
    """For each phrase, the number of captions containing it as whole adjacent words (case-insensitive)."""
    wanted = {p: tuple(_normalise(p)) for p in phrases}
    lengths = {len(t) for t in wanted.values() if t}
    counter: Counter[tuple[str, ...]] = Counter()
    for caption in captions:
        words = _normalise(caption)
        grams = {tuple(words[i:i + n]) for n in lengths for i in range(len(words) - n + 1)}
        counter.update(grams)
    return {p: counter.get(t, 0) for p, t in wanted.items()}


def real_synonyms(world: World, captions: list[str]) -> dict[str, dict[str, Any]]:
    """Synonyms per species with their corpus counts, in REAL's metrics format.

    ``{"0": {"name": official, "alternates": {name or synonym: count}, "most_common_name": ...}, ...}``;
    the official name is listed among its own alternates. Ties go to the official name.
    """
    phrases = {p for s in world.species for p in (s.name, *s.synonyms)}
    counts = synonym_counts(captions, phrases)
    out: dict[str, dict[str, Any]] = {}
    for s in world.species:
        alternates = {p: counts[p] for p in (s.name, *s.synonyms)}
        best = max(alternates, key=lambda p: (alternates[p], p == s.name))
        out[str(s.index)] = {"name": s.name, "alternates": alternates, "most_common_name": best}
    return out
