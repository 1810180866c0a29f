"""The toy world's pretraining corpus: long-tailed image-caption pairs stored as parquet, plus name counts.

Each row is one individual: its caption, species, the attributes it shows, its rendering style and the render
seed from which ``render.render`` redraws the image, so the corpus is a few MB on disk. Captions mix names,
attribute phrases and style words ("a sketch of a striped vorlick on sand"); how often a species appears and
how it is named follows its tier in ``spec.TIERS``. ``synonym_counts`` counts names in captions the way REAL
counts them in LAION captions (case-insensitive whole-phrase matches), and ``real_synonyms`` writes the
result in REAL's metrics format.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._io import atomic_path
from ..errors import ZsclipError
from .spec import ATTRIBUTES, CORPUS_STYLE_WEIGHTS, TIERS, World, _unit, instance_attributes

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

    keys = list(ATTRIBUTES)
    chosen: list[str] = []
    while len(chosen) < n_attr:
        k = rng.choices(keys, weights=[_ATTR_WEIGHTS[k] for k in keys])[0]
        keys.remove(k)
        chosen.append(k)

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
