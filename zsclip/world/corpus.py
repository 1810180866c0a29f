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
counts them in LAION captions (``zsclip.corpus_count``: FTS5 unicode61 phrase matches), ``real_synonyms``
writes the result in REAL's metrics format and ``caption_truth`` gives the counts the captions must yield,
from how they were written. ``export_corpus`` writes the corpus as a clip-retrieval embedding folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._io import atomic_path, write_json_atomic
from ..corpus_count import ClassNames, count_captions, count_names
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
                 render_seed: int) -> tuple[str, str, str]:
    """The caption of one corpus row, the name it uses ("" when it names no species) and its head noun.

    The head noun is the name when there is one, else the genus word or a generic noun ("creature"; a
    one-off word before it is not part of it). Deterministic in (world seed, species, render seed). The
    species' tier decides whether and how it is named; the rest of the caption is a random choice of
    attribute phrases that are true of ``attrs``.
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
    head_noun = noun

    if not name and _unit("one-off", world.seed, species_index, render_seed).random() < P_ONE_OFF_WORD:
        noun = f"{_one_off_word(world, species_index, render_seed)} {noun}"

    clause_rng = _unit("clause", world.seed, species_index, render_seed)
    if clause_rng.random() < P_RELATIVE_CLAUSE:
        return _relative_caption(clause_rng, noun, bool(name), attrs, style), name, head_noun

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
    return phrase, name, head_noun


def build_corpus(world: World, scale: float = 1.0) -> pa.Table:
    """The corpus of ``world`` as an arrow table; ``scale`` multiplies every species' image count.

    Columns: caption, species (label), name_used, noun (the caption's head noun, see ``make_caption``),
    attributes (JSON of the individual's attributes), style, render_seed (= row index, unique). Rows are
    shuffled deterministically so that species are mixed.
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
    cols: dict[str, list[Any]] = {k: [] for k in ("caption", "species", "name_used", "noun", "attributes",
                                                   "style", "render_seed")}
    for seed, (sid, _) in enumerate(rows):
        style = _unit("style", world.seed, seed).choices(styles, weights=weights)[0]
        attrs = instance_attributes(world, sid, seed)
        caption, name, noun = make_caption(world, sid, attrs, style, seed)
        cols["caption"].append(caption)
        cols["species"].append(sid)
        cols["name_used"].append(name)
        cols["noun"].append(noun)
        cols["attributes"].append(json.dumps(attrs, sort_keys=True))
        cols["style"].append(style)
        cols["render_seed"].append(seed)
    schema = pa.schema([("caption", pa.string()), ("species", pa.int32()), ("name_used", pa.string()),
                        ("noun", pa.string()), ("attributes", pa.string()), ("style", pa.string()),
                        ("render_seed", pa.int64())])
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


def synonym_counts(captions: Iterable[str], phrases: Iterable[str]) -> dict[str, int]:
    """For each phrase, the number of captions containing it, counted as REAL counts LAION captions.

    The same counter as ``zsclip corpus count`` (``zsclip.corpus_count.count_names``): FTS5 ``unicode61``
    tokens, the phrase's tokens adjacent and in order.
    """
    return count_names(captions, phrases)


def world_classes(world: World) -> list[ClassNames]:
    """The world's species as classes to count: key = label, names = official name then synonyms."""
    return [ClassNames(str(s.index), s.name, list(dict.fromkeys((s.name, *s.synonyms)))) for s in world.species]


def real_synonyms(world: World, captions: list[str]) -> dict[str, dict[str, Any]]:
    """Synonyms per species with their corpus counts, in REAL's metrics format.

    ``{"0": {"name": official, "alternates": {name or synonym: count}, "most_common_name": ...,
    "actual_freq": captions naming the species by any of its names}, ...}``; the official name is listed
    among its own alternates; ties go to the official name. Counted by ``zsclip.corpus_count``.
    """
    return count_captions(captions, world_classes(world)).metrics()


def caption_truth(world: World, table: pa.Table) -> tuple[dict[str, int], dict[int, int]]:
    """How many captions of ``table`` contain each of the world's names, and each species' actual_freq.

    Read from how each caption was written (its ``name_used`` and head ``noun``), not from its text: a
    caption contains the name it uses, the genus word of an official name it uses ("krell vorlick"
    contains "vorlick", a name trap's synonym) and its head noun when that is a genus word. No other
    name occurs in a caption (one-off words are never a name's word). The counts of ``zsclip corpus count``
    on the corpus must equal these exactly.
    """
    genus_of_official = {s.name: s.genus_word for s in world.species}
    genus_words = set(world.genus_words)
    counts: Counter[str] = Counter()
    for used, noun in zip(table.column("name_used").to_pylist(), table.column("noun").to_pylist(), strict=True):
        present = {used} if used else set()
        if used in genus_of_official:
            present.add(genus_of_official[used])
        if not used and noun in genus_words:
            present.add(noun)
        counts.update(present)
    per_name = {p: counts[p] for s in world.species for p in (s.name, *s.synonyms)}
    actual: dict[int, int] = {}
    rows = list(zip(table.column("name_used").to_pylist(), table.column("noun").to_pylist(), strict=True))
    for s in world.species:
        names = {s.name, *s.synonyms}
        trap = s.trap_synonym
        actual[s.index] = sum(
            1 for used, noun in rows
            if used in names or (trap is not None and (genus_of_official.get(used) == trap
                                                      or (not used and noun == trap))))
    return per_name, actual


#: rows per exported shard (LAION's folders hold 10^6; smaller here so the toy corpus has several shards)
EXPORT_SHARD_ROWS = 32_768
EXPORT_MANIFEST = "zsclip-export.json"
_RENDER_CHUNK = 512


def _export_params(world: World, table: pa.Table, encoder: Any, shard_rows: int) -> dict[str, Any]:
    from .train import corpus_fingerprint

    captions = hashlib.sha256("\n".join(table.column("caption").to_pylist()).encode()).hexdigest()[:16]
    return {"world_seed": world.seed, "rows": table.num_rows, "shard_rows": shard_rows,
            "corpus": f"{corpus_fingerprint(table)}-{captions}", "model": encoder.describe()}


def export_corpus(world: World, table: pa.Table, out_dir: str | Path, encoder: Any,
                  shard_rows: int = EXPORT_SHARD_ROWS, workers: int = 2, images: np.ndarray | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write ``table`` (rows of ``build_corpus``) as a clip-retrieval embedding folder under ``out_dir``.

    ``metadata/metadata_N.parquet``: caption, image_path ("toyworld-corpus:<render seed>"), species,
    tier, name_used, noun, style, render_seed. ``img_emb/img_emb_N.npy``: the rendered images encoded by
    ``encoder`` (an ``zsclip.models.Encoder``); ``text_emb/text_emb_N.npy``: the captions encoded by it;
    both L2-normalised float16, row-aligned with the metadata. Images are rendered in ``workers``
    processes unless ``images`` (the rendered corpus, as ``train.render_corpus_images`` caches it) is
    given. Each shard's files are written atomically, metadata last, so an interrupted export resumes at
    the first incomplete shard. Returns the export manifest (also written as ``zsclip-export.json``).
    """
    import torch
    from PIL import Image

    from .train import _render_chunk

    out = Path(out_dir)
    params = _export_params(world, table, encoder, shard_rows)
    manifest_path = out / EXPORT_MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        if previous.get("params") != params:
            raise ZsclipError(f"{out} holds another export ({manifest_path}: other rows, shard size or model); "
                              "choose another --out or delete that folder")
    write_json_atomic(manifest_path, {"params": params, "complete": False})
    n = table.num_rows
    n_shards = max(1, -(-n // shard_rows))
    digits = len(str(n_shards))
    tiers = [s.tier for s in world.species]
    started = time.perf_counter()
    encoded = 0
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for k in range(n_shards):
            lo, hi = k * shard_rows, min(n, (k + 1) * shard_rows)
            name = str(k).zfill(digits)
            paths = {"metadata": out / "metadata" / f"metadata_{name}.parquet",
                     "img": out / "img_emb" / f"img_emb_{name}.npy", "text": out / "text_emb" / f"text_emb_{name}.npy"}
            if all(p.is_file() for p in paths.values()) and all(
                    np.load(paths[x], mmap_mode="r").shape[0] == hi - lo for x in ("img", "text")):
                log.info("shard %s already exported", name)
                if progress:
                    progress(hi - lo)
                continue
            part = table.slice(lo, hi - lo)
            seeds = part.column("render_seed").to_pylist()
            if images is not None:
                chunks: Iterable[np.ndarray] = (np.asarray(images[i:min(hi, i + _RENDER_CHUNK)])
                                                for i in range(lo, hi, _RENDER_CHUNK))
            else:
                attrs, styles = part.column("attributes").to_pylist(), part.column("style").to_pylist()
                jobs = [(attrs[i:i + _RENDER_CHUNK], styles[i:i + _RENDER_CHUNK], seeds[i:i + _RENDER_CHUNK])
                        for i in range(0, hi - lo, _RENDER_CHUNK)]
                chunks = pool.map(_render_chunk, jobs)
            img_parts = []
            for pixels in chunks:
                batch = torch.stack([encoder.preprocess(Image.fromarray(p)) for p in pixels])
                img_parts.append(encoder.encode_images(batch).astype(np.float16))
                if progress:
                    progress(len(pixels))
            captions = part.column("caption").to_pylist()
            text = encoder.encode_texts(captions).astype(np.float16)
            _save_npy(paths["img"], np.concatenate(img_parts))
            _save_npy(paths["text"], text)
            species = part.column("species").to_pylist()
            meta = pa.table({
                "caption": part.column("caption"),
                "image_path": pa.array([f"toyworld-corpus:{s}" for s in seeds], pa.string()),
                "species": part.column("species"),
                "tier": pa.array([tiers[s] for s in species], pa.string()),
                "name_used": part.column("name_used"),
                "noun": part.column("noun"),
                "style": part.column("style"),
                "render_seed": part.column("render_seed"),
            })
            with atomic_path(paths["metadata"], suffix=".parquet") as tmp:
                pq.write_table(meta, tmp, compression="zstd")
            encoded += hi - lo
            log.info("exported shard %s (%d rows)", name, hi - lo)
    summary = {"params": params, "complete": True, "shards": n_shards, "rows": n, "rows_encoded": encoded,
               "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(manifest_path, summary)
    return summary


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
