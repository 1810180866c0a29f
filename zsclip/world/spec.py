"""The toy world's species: their visual attributes, names, synonyms and corpus-frequency tiers.

Everything here is a pure function of a seed, so the world, the corpus built from it and the evaluation
dataset agree on every machine without shipping data. Species come in genera: relatives share the genus's
body shape and distinctive part plus most other attributes and differ in one or two (colour, pattern, eyes,
habitat, size), which makes the classification fine-grained in the way bird species are.

Each species belongs to one frequency tier that fixes how often the corpus shows and names it:

- ``head``: many images, named often by the official name;
- ``mid``: a fair number of images, named about half the time;
- ``tail``: few images, rarely named; half of them carry a *name trap*, a synonym (the genus word) whose
  words are a subset of the official name and which is far more frequent in the corpus than the name;
- ``nickname``: named mostly by a nickname, seldom by the official name (REAL-Prompt should find it);
- ``never``: never named in the corpus at all, neither by the official name nor by a synonym; only
  descriptions of their attributes can identify them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SEED = 0

SHAPES = ("round", "oval", "long", "triangular", "boxy", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (206, 40, 40),
    "orange": (236, 132, 28),
    "yellow": (236, 208, 40),
    "green": (56, 164, 60),
    "blue": (44, 92, 214),
    "purple": (128, 56, 176),
    "pink": (238, 128, 184),
    "brown": (122, 78, 40),
    "black": (34, 34, 38),
    "white": (240, 240, 236),
}
PATTERNS = ("plain", "striped", "spotted", "checkered")
PARTS = ("crest", "tail", "horns", "antennae", "wings", "ring")
HABITATS = ("sand", "grass", "water", "snow", "rocks", "sky")
SIZES = ("small", "medium", "large")
EYES = ("one", "two", "three")
STYLES = ("photo", "painting", "cartoon", "pixel", "sketch")
#: how often each rendering style occurs in the pretraining corpus (photo is the majority)
CORPUS_STYLE_WEIGHTS: dict[str, float] = {
    "photo": 0.55,
    "painting": 0.15,
    "cartoon": 0.12,
    "pixel": 0.10,
    "sketch": 0.08,
}
#: the style of the evaluation dataset: rare in the corpus, so "a photo of" is the wrong template
EVAL_STYLE = "sketch"

#: attributes a species may change relative to its genus, with the chance of each being picked
_VARIABLE = ("colour", "pattern", "eyes", "habitat", "size")
_VARIABLE_WEIGHTS = (0.4, 0.25, 0.12, 0.13, 0.1)
_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "pattern": PATTERNS,
    "part": PARTS,
    "habitat": HABITATS,
    "size": SIZES,
    "eyes": EYES,
}
ATTRIBUTES = tuple(_ATTRIBUTE_VALUES)

#: tiers: number of species per genus slot and the corpus plan (images per species, chance a caption names it)
TIERS: dict[str, dict[str, Any]] = {
    "head": {"images": (1800, 3200), "p_named": 0.6},
    "mid": {"images": (600, 1000), "p_named": 0.5},
    "tail": {"images": (150, 300), "p_named": 0.12},
    "nickname": {"images": (600, 900), "p_named": 0.6, "p_nickname": 0.88},
    "never": {"images": (600, 900), "p_named": 0.0},
}
#: how many of the non-head, non-tail species go to each remaining tier (per 20 genera of 5)
_FREE_TIER_SHARES = {"mid": 35, "nickname": 12, "never": 13}
#: chance an individual is seen away from its species' habitat
P_STRAY_HABITAT = 0.12

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
           "pl", "sk", "th", "zh", "qu", "fl", "sn", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee", "y")
_CODAS = ("", "", "n", "r", "l", "k", "x", "sh", "m", "th", "ck", "p")
#: words the caption grammar uses; made-up names must not collide with them
_RESERVED = {"a", "an", "the", "of", "on", "in", "with", "and", "its", "it", "is", "has", "which", "photo",
             "sketch", "drawing", "painting", "cartoon", "pixel", "art", "creature", "animal", "critter",
             "beast", "body", "skin", "eyes", "eye", "spots", "stripes", "tail", "crest", "horns", "wings",
             "ring", "halo", "sand", "grass", "water", "snow", "rocks", "sky", "small", "large", "big", "tiny",
             "round", "oval", "long", "boxy", "plain", "dark", "light", "desert", "meadow", "lake", "pond",
             *COLOURS, *SHAPES, *PATTERNS, *PARTS, *HABITATS, *SIZES, *EYES}


@dataclass(frozen=True)
class Species:
    """One class of the world: its attributes, names and corpus tier."""

    index: int
    genus: int
    genus_word: str
    epithet: str
    attributes: dict[str, str]
    tier: str
    nickname: str | None = None
    rare_synonyms: tuple[str, ...] = ()
    trap_synonym: str | None = None

    @property
    def name(self) -> str:
        """The official name: epithet + genus word, e.g. "krell vorlick"."""
        return f"{self.epithet} {self.genus_word}"

    @property
    def synonyms(self) -> tuple[str, ...]:
        """Every other way of referring to the species (nickname, rare synonyms, name trap)."""
        out = [s for s in (self.nickname, *self.rare_synonyms, self.trap_synonym) if s]
        return tuple(out)


@dataclass(frozen=True)
class World:
    """The species of a world built from ``seed``, in label order."""

    seed: int
    species: tuple[Species, ...]
    genus_words: tuple[str, ...]
    tier_counts: dict[str, int] = field(default_factory=dict)

    @property
    def classnames(self) -> list[str]:
        """Official names in label order."""
        return [s.name for s in self.species]

    def by_tier(self, tier: str) -> list[Species]:
        """The species of one tier, in label order."""
        return [s for s in self.species if s.tier == tier]


def _make_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """``count`` new pronounceable made-up words, none in ``taken`` (which is updated)."""
    out: list[str] = []
    while len(out) < count:
        n_syl = rng.choice((2, 2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syl)) + rng.choice(_CODAS)
        if 5 <= len(word) <= 10 and word not in taken and word not in _RESERVED:
            taken.add(word)
            out.append(word)
    return out


def build_world(seed: int = DEFAULT_SEED, n_genera: int = 20, per_genus: int = 5) -> World:
    """Build the world deterministically from ``seed``: ``n_genera * per_genus`` species.

    Every genus has one head and one tail species; the other slots are shared out among the mid,
    nickname and never-named tiers in proportion to ``_FREE_TIER_SHARES``. Half the tail species (rounded
    down) get a name trap.
    """
    rng = random.Random(f"zsclip-toyworld-{seed}")
    taken: set[str] = set()
    genus_words = _make_words(rng, n_genera, taken)

    combos = [(s, p) for s in SHAPES for p in PARTS]
    rng.shuffle(combos)
    if n_genera > len(combos):
        raise ValueError(f"at most {len(combos)} genera fit the shape x part combinations, got {n_genera}")

    free_slots = n_genera * (per_genus - 2)
    total_share = sum(_FREE_TIER_SHARES.values())
    free_tiers: list[str] = []
    for tier, share in _FREE_TIER_SHARES.items():
        free_tiers += [tier] * round(free_slots * share / total_share)
    free_tiers = (free_tiers + ["mid"] * free_slots)[:free_slots]
    rng.shuffle(free_tiers)

    species: list[Species] = []
    for g in range(n_genera):
        shape, part = combos[g]
        base = {
            "shape": shape,
            "colour": rng.choice(tuple(COLOURS)),
            "pattern": rng.choice(PATTERNS),
            "part": part,
            "habitat": rng.choice(HABITATS),
            "size": rng.choice(SIZES),
            "eyes": rng.choice(EYES),
        }
        seen: set[tuple[str, ...]] = set()
        members: list[dict[str, str]] = []
        while len(members) < per_genus:
            attrs = dict(base)
            n_changes = rng.choice((1, 2, 2))
            picked = rng.choices(_VARIABLE, weights=_VARIABLE_WEIGHTS, k=n_changes)
            for key in dict.fromkeys(picked):  # ordered de-duplication: sets iterate in hash order
                attrs[key] = rng.choice([v for v in _ATTRIBUTE_VALUES[key] if v != base[key]])
            sig = tuple(attrs[k] for k in ATTRIBUTES)
            if sig not in seen:
                seen.add(sig)
                members.append(attrs)
        tiers = ["head", "tail"] + [free_tiers.pop() for _ in range(per_genus - 2)]
        rng.shuffle(tiers)
        epithets = _make_words(rng, per_genus, taken)
        for attrs, tier, epithet in zip(members, tiers, epithets, strict=True):
            species.append(
                Species(
                    index=len(species),
                    genus=g,
                    genus_word=genus_words[g],
                    epithet=epithet,
                    attributes=attrs,
                    tier=tier,
                )
            )

    # names beyond the official one: nicknames, rare synonyms, traps
    tail_ids = [s.index for s in species if s.tier == "tail"]
    trap_ids = set(rng.sample(tail_ids, len(tail_ids) // 2))
    final: list[Species] = []
    for s in species:
        nickname = _make_words(rng, 1, taken)[0] if s.tier == "nickname" else None
        rare = tuple(_make_words(rng, rng.choice((1, 2)), taken))
        trap = s.genus_word if s.index in trap_ids else None
        final.append(
            Species(s.index, s.genus, s.genus_word, s.epithet, s.attributes, s.tier, nickname, rare, trap)
        )
    counts = {t: sum(1 for s in final if s.tier == t) for t in TIERS}
    return World(seed=seed, species=tuple(final), genus_words=tuple(genus_words), tier_counts=counts)


def _unit(*parts: object) -> random.Random:
    """A private random stream for one (purpose, ids...) tuple, stable across Python versions."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def instance_attributes(world: World, species_index: int, render_seed: int) -> dict[str, str]:
    """The attributes one individual (species, render seed) shows: the species' own, except that with
    probability ``P_STRAY_HABITAT`` it is seen in another habitat. Captions and renderer both use this."""
    attrs = dict(world.species[species_index].attributes)
    rng = _unit("instance", world.seed, species_index, render_seed)
    if rng.random() < P_STRAY_HABITAT:
        attrs["habitat"] = rng.choice([h for h in HABITATS if h != attrs["habitat"]])
    return attrs


# -- LLM-like descriptors ------------------------------------------------------------------------
_TRUE_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "round": ("a round body", "a round, ball-like body"),
        "oval": ("an oval body", "an egg-shaped oval body"),
        "long": ("a long, slender body", "an elongated long body"),
        "triangular": ("a triangular body", "a body shaped like a triangle"),
        "boxy": ("a boxy, square body", "a blocky boxy body"),
        "diamond": ("a diamond-shaped body", "a body shaped like a diamond"),
    },
    "colour": {c: (f"{c} skin", f"a {c} body", f"{c} colouring") for c in COLOURS},
    "pattern": {
        "plain": ("plain skin without markings", "a plain, unpatterned body"),
        "striped": ("dark stripes across the body", "striped skin"),
        "spotted": ("spots all over its body", "spotted skin"),
        "checkered": ("a checkered pattern", "a checkered, chessboard-like pattern"),
    },
    "part": {
        "crest": ("a crest on top of its head", "a spiky crest"),
        "tail": ("a long curved tail", "a long tail"),
        "horns": ("a pair of horns", "two pointed horns"),
        "antennae": ("two thin antennae", "antennae with round tips"),
        "wings": ("a pair of small wings", "wings on its sides"),
        "ring": ("a halo ring above its head", "a floating ring over its head"),
    },
    "eyes": {"one": ("one large eye", "a single eye"), "two": ("two eyes", "a pair of eyes"),
             "three": ("three eyes", "three eyes in a row")},
    "habitat": {
        "sand": ("often found on sand", "lives in the desert sand"),
        "grass": ("often found on grass", "lives in grassy meadows"),
        "water": ("often found in water", "lives in lakes and water"),
        "snow": ("often found in snow", "lives in snowy places"),
        "rocks": ("often found on rocks", "lives among rocks"),
        "sky": ("often seen in the sky", "flies high in the sky"),
    },
    "size": {"small": ("small size", "a tiny body"), "medium": ("medium size",),
             "large": ("large size", "a big, heavy body")},
}
_GENERIC = ("has eyes", "is an animal", "a head", "a mouth", "is a living creature", "can move around",
            "has skin", "a body", "typically seen in the wild", "may be seen alone")


def descriptors(world: World, n_true: tuple[int, int] = (3, 5), n_generic: tuple[int, int] = (1, 3),
                n_wrong: tuple[int, int] = (0, 2)) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """Descriptors per species as an LLM would write them, and the truth about each.

    Returns ``(cbd, truth)``: ``cbd`` is ``{official name: [descriptor, ...]}`` in label order (the CbD
    format); ``truth`` maps the same names to ``[{"descriptor", "kind", "attribute"}, ...]`` where kind is
    ``true`` (an attribute the species has; colour and pattern always, 3-5 others), ``generic`` (true of
    every species) or ``wrong`` (a hallucinated attribute value the species does not have). The order of
    descriptors is shuffled so position carries no signal.
    """
    cbd: dict[str, list[str]] = {}
    truth: dict[str, list[dict]] = {}
    for s in world.species:
        rng = _unit("descriptors", world.seed, s.index)
        items: list[dict] = []
        # like an LLM, always mention colour and pattern, then a few of the other attributes
        others = [k for k in ATTRIBUTES if k not in ("colour", "pattern")]
        rng.shuffle(others)
        for key in ["colour", "pattern", *others[: rng.randint(*n_true)]]:
            phrase = rng.choice(_TRUE_PHRASES[key][s.attributes[key]])
            items.append({"descriptor": phrase, "kind": "true", "attribute": key})
        for phrase in rng.sample(_GENERIC, rng.randint(*n_generic)):
            items.append({"descriptor": phrase, "kind": "generic", "attribute": None})
        wrong_keys = rng.sample([k for k in ATTRIBUTES if k not in ("shape", "part")], rng.randint(*n_wrong))
        for key in wrong_keys:
            value = rng.choice([v for v in _ATTRIBUTE_VALUES[key] if v != s.attributes[key]])
            items.append({"descriptor": rng.choice(_TRUE_PHRASES[key][value]), "kind": "wrong",
                          "attribute": key})
        rng.shuffle(items)
        seen: set[str] = set()
        items = [it for it in items if not (it["descriptor"] in seen or seen.add(it["descriptor"]))]
        cbd[s.name] = [it["descriptor"] for it in items]
        truth[s.name] = items
    return cbd, truth


def attribute_phrases(species: Species) -> list[str]:
    """One plain descriptor per attribute of ``species`` (all true): the LLM-free, annotation-based set."""
    return [_TRUE_PHRASES[key][species.attributes[key]][0] for key in ATTRIBUTES]


def world_summary(world: World) -> dict[str, Any]:
    """A JSON-able description of the world (seed, attribute vocabularies, tiers with their species)."""
    return {
        "seed": world.seed,
        "num_species": len(world.species),
        "num_genera": len(world.genus_words),
        "attributes": {k: list(v) for k, v in _ATTRIBUTE_VALUES.items()},
        "styles": {"corpus_weights": CORPUS_STYLE_WEIGHTS, "eval_style": EVAL_STYLE},
        "tiers": {t: {"count": world.tier_counts[t], "plan": TIERS[t],
                      "species": [s.name for s in world.by_tier(t)]} for t in TIERS},
        "name_traps": {s.name: s.trap_synonym for s in world.species if s.trap_synonym},
        "nicknames": {s.name: s.nickname for s in world.species if s.nickname},
    }


def dataset_card(world: World) -> dict[str, Any]:
    """The dataset card of the ``toyworld`` evaluation dataset (``datasets/toyworld.json``)."""
    return {
        "name": "toyworld",
        "title": "zsclip toy world",
        "description": (f"{len(world.species)} made-up creature species in {len(world.genus_words)} genera, "
                        f"rendered procedurally from seeds (world seed {world.seed}); evaluation images are "
                        f"drawn in the {EVAL_STYLE} style while the pretraining corpus is mostly photos."),
        "num_classes": len(world.species),
        "style": EVAL_STYLE,
        "world_seed": world.seed,
        "domain_words": ["creature", "creatures", "animal"],
        "type_words": ["creature", "animal", "critter"],
        "model": "toyworld",
        "descriptors": "toyworld/descriptors.json",
        "cupl": "toyworld/descriptors_cupl_oracle.json",
        "synonyms": "toyworld/synonyms.json",
        "templates": [
            "a photo of a {}.",
            "a sketch of a {}.",
            "a pencil sketch of a {}.",
            "a painting of a {}.",
            "a cartoon of a {}.",
            "pixel art of a {}.",
            "a {}.",
        ],
        "classnames": world.classnames,
    }
