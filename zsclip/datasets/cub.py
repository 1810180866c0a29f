"""The CUB-200-2011 birds dataset, read from its official layout, and its attribute-based descriptors.

Layout (as unpacked from ``CUB_200_2011.tgz``): ``images/NNN.Class_Name/*.jpg``, ``images.txt`` (image id,
relative path), ``image_class_labels.txt`` (image id, 1-based class id), ``train_test_split.txt`` (image id,
1 = train / 0 = test), ``classes.txt`` (class id, ``NNN.Class_Name``) and ``attributes/`` with the
per-class attribute percentages. The archive puts ``attributes.txt`` (attribute names) beside
``CUB_200_2011/``. Annotation files are checked line by line; a damaged one is reported with its line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DatasetError, option
from .base import Dataset, Sample, register_dataset
from .download import default_data_root, load_card

logger = logging.getLogger(__name__)

_FOLDER = "CUB_200_2011"
_FIX = "download it again with `zsclip datasets download cub --root DIR`"
_NUMBER_PREFIX = re.compile(r"^\d+\.")


def cub_classname(raw: str, overrides: dict[str, str] | None = None) -> str:
    """The readable name of a CUB class folder: ``001.Black_footed_Albatross`` -> ``Black-footed Albatross``.

    The ``NNN.`` numbering is dropped; an underscore before a lowercase word becomes a hyphen, any other
    underscore a space. ``overrides`` (keyed by the name without numbering) wins over the rule.
    """
    bare = _NUMBER_PREFIX.sub("", raw.strip())
    if overrides and bare in overrides:
        return overrides[bare]
    words = [w for w in bare.split("_") if w]
    if not words:
        return bare
    name = words[0]
    for word in words[1:]:
        name += ("-" if word[0].islower() else " ") + word
    return name


def _with_article(phrase: str) -> str:
    """``phrase`` with the indefinite article that fits its first sound (a / an)."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


# Descriptor phrasing. A descriptor is read in "{class}, which is/has ..." (METHODS §1): it starts with
# "a"/"an" only when it names what the bird IS ("a large bird"); what the bird HAS is either a plural or
# mass noun ("blue wings", "mostly blue plumage") or starts with "has" ("has a dagger-shaped bill").
_PLURAL_PARTS = {
    "wing": "wings",
    "upperparts": "upperparts",
    "underparts": "underparts",
    "eye": "eyes",
    "leg": "legs",
}
_SINGULAR_PARTS = {
    "back": "back",
    "upper_tail": "upper tail",
    "under_tail": "undertail",
    "breast": "breast",
    "throat": "throat",
    "forehead": "forehead",
    "nape": "nape",
    "belly": "belly",
    "bill": "bill",
    "crown": "crown",
    "tail": "tail",
}
_PATTERNS = {"solid": "solid-colored", "multi-colored": "multi-colored"}
_BILL_SHAPES = {
    "curved_(up_or_down)": "has a curved bill",
    "dagger": "has a dagger-shaped bill",
    "hooked": "has a hooked bill",
    "needle": "has a thin, needle-like bill",
    "hooked_seabird": "has a hooked seabird bill",
    "spatulate": "has a flat, spatulate bill",
    "all-purpose": "has an all-purpose bill",
    "cone": "has a cone-shaped bill",
    "specialized": "has a specialized bill",
}
_HEAD_PATTERNS = {
    "spotted": "has a spotted head",
    "malar": "has a malar stripe on its cheek",
    "crested": "has a crest on its head",
    "masked": "has a dark mask across its face",
    "unique_pattern": "has a uniquely patterned head",
    "eyebrow": "has a stripe above its eye",
    "eyering": "has a ring around its eye",
    "plain": "has a plain head",
    "eyeline": "has a stripe through its eye",
    "striped": "has a striped head",
    "capped": "has a cap of color on its head",
}
_BILL_LENGTHS = {
    "about_the_same_as_head": "has a bill about as long as its head",
    "longer_than_head": "has a bill longer than its head",
    "shorter_than_head": "has a bill shorter than its head",
}
_SHAPES = {
    "upright-perching_water-like": "an upright-perching water bird",
    "chicken-like-marsh": "a chicken-like marsh bird",
    "long-legged-like": "a long-legged wading bird",
    "tree-clinging-like": "a tree-clinging bird",
    "upland-ground-like": "an upland ground bird",
    "perching-like": "a perching bird",
}
_SIZE = re.compile(r"^(?P<word>[a-z_]+?)_\((?P<low>[\d.]+)_-_(?P<high>[\d.]+)_in\)$")


def _words(value: str) -> str:
    """An attribute value as words: underscores become spaces."""
    return " ".join(w for w in value.split("_") if w)


def _pattern(value: str) -> str:
    """A pattern value (solid, spotted, striped, multi-colored) as an adjective."""
    return _PATTERNS.get(value, _words(value))


def _part_phrase(part: str, adjective: str) -> str | None:
    """``{adjective} {part}`` phrased for "which has ...", or None for a part the table does not know."""
    if part in _PLURAL_PARTS:
        return f"{adjective} {_PLURAL_PARTS[part]}"
    if part in _SINGULAR_PARTS:
        return "has " + _with_article(f"{adjective} {_SINGULAR_PARTS[part]}")
    return None


def cub_attribute_phrase(attribute: str) -> str:
    """A CUB attribute name (``has_bill_shape::dagger``) as a descriptor (``has a dagger-shaped bill``).

    Every one of CUB's 28 attribute groups has a rule; the phrase reads correctly after "{class}, which"
    under the METHODS §1 phrasing rule. Raises ``DatasetError`` for a name outside CUB's vocabulary.
    """
    group, sep, value = attribute.strip().partition("::")
    if not sep or not group.startswith("has_") or not value:
        raise DatasetError(f"{attribute!r} is not a CUB attribute name (expected 'has_<group>::<value>')")
    group = group[len("has_") :]
    phrase: str | None = None
    if group == "bill_shape":
        phrase = _BILL_SHAPES.get(value, "has " + _with_article(f"{_words(value)} bill"))
    elif group == "head_pattern":
        phrase = _HEAD_PATTERNS.get(value, "has " + _with_article(f"{_words(value)} head"))
    elif group == "bill_length":
        phrase = _BILL_LENGTHS.get(value, f"has a bill {_words(value)}")
    elif group == "tail_shape":
        phrase = "has " + _with_article(f"{_words(value.removesuffix('_tail'))} tail")
    elif group == "wing_shape":
        phrase = f"{_words(value.removesuffix('-wings'))} wings"
    elif group == "size":
        match = _SIZE.match(value)
        if match:
            size = _words(match["word"]).replace("medium", "medium-sized")
            phrase = _with_article(f"{size} bird, {match['low']} to {match['high']} inches long")
        else:
            phrase = _with_article(f"{_words(value)} bird")
    elif group == "shape":
        phrase = _SHAPES.get(value, _with_article(f"{_words(value)} bird"))
    elif group == "primary_color":
        phrase = f"mostly {_words(value)} plumage"
    elif group.endswith("_color"):
        phrase = _part_phrase(group.removesuffix("_color"), _words(value))
    elif group.endswith("_pattern"):
        phrase = _part_phrase(group.removesuffix("_pattern"), _pattern(value))
    if phrase is None:
        raise DatasetError(f"{attribute!r} is not in CUB's attribute vocabulary (unknown group {group!r})")
    return phrase


@register_dataset("cub", "CUB-200-2011: 200 bird species, 5,994 train / 5,794 test images, 312 attributes")
class CubDataset(Dataset):
    """CUB-200-2011 read from its official files.

    ``root`` is the ``CUB_200_2011`` folder or the folder holding it; by default the one
    ``zsclip datasets download cub`` unpacks under the cache.

    Splits: ``test`` (the official test split), ``trainval`` (the official training split), and ``train`` /
    ``val`` carved from it: ``val`` holds ``round(val_fraction × n)`` (at least 1) of each class's ``n``
    official training images, drawn with ``split_seed`` (NumPy's ``default_rng``) from the images in id
    order; ``train`` holds the rest. The carving depends only on the annotation files, the fraction and the
    seed, so it is the same on every machine; the run record names both. Methods fit on ``train`` and choose
    on ``val``; CUB ships no validation split of its own.
    """

    name = "cub"
    splits = ("train", "val", "test", "trainval")
    default_split = "test"

    def __init__(self, root: str | Path | None = None, val_fraction: float = 0.1, split_seed: int = 0) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise DatasetError(f"CUB's val_fraction must be between 0 and 1, got {val_fraction}")
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.card = load_card("cub")
        self.root = self._find_root(Path(root).expanduser() if root is not None else default_data_root())
        overrides = self.card.get("classname_overrides", {})
        classes = self._read_table(self.root / "classes.txt", ("class id", "class folder"))
        self.class_folders = _contiguous(classes, self.root / "classes.txt", "class")
        self.classnames = [cub_classname(folder, overrides) for folder in self.class_folders]
        self._split_cache.update(self._read_samples())

    def _find_root(self, root: Path) -> Path:
        """The folder holding ``images.txt``: ``root`` itself or ``root/CUB_200_2011``."""
        for candidate in (root, root / _FOLDER):
            if (candidate / "images.txt").is_file():
                return candidate.resolve()
        raise DatasetError(
            f"no CUB-200-2011 annotation files in {root} (looked for images.txt there and in {_FOLDER}/); "
            f"pass the CUB_200_2011 folder (or its parent) with {option('--dataset-root DIR', 'root=DIR')}, or "
            "download it with "
            "`zsclip datasets download cub --root DIR`"
        )

    @staticmethod
    def _read_table(path: Path, fields: tuple[str, str]) -> dict[int, str]:
        """Read ``id value`` lines of an annotation file into ``{id: value}``, checking every line."""
        if not path.is_file():
            raise DatasetError(f"CUB annotation file missing: {path}; {_FIX}")
        table: dict[int, str] = {}
        for lineno, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise DatasetError(
                    f"{path}, line {lineno}: expected '<{fields[0]}> <{fields[1]}>', "
                    f"got {line.strip()!r}. The file is damaged; {_FIX}"
                )
            key = int(parts[0])
            if key in table:
                raise DatasetError(
                    f"{path}, line {lineno}: {fields[0]} {key} appears twice. The file is damaged; {_FIX}"
                )
            table[key] = parts[1].strip()
        return table

    def _read_samples(self) -> dict[str, list[Sample]]:
        """Join images.txt, image_class_labels.txt and train_test_split.txt into the two splits."""
        images = self._read_table(self.root / "images.txt", ("image id", "relative path"))
        labels = self._read_table(self.root / "image_class_labels.txt", ("image id", "class id"))
        is_train = self._read_table(self.root / "train_test_split.txt", ("image id", "1 (train) or 0 (test)"))
        n_classes = len(self.class_folders)
        splits: dict[str, list[Sample]] = {"train": [], "test": []}
        for image_id in sorted(images):
            for table, filename in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
                if image_id not in table:
                    raise DatasetError(
                        f"{self.root / filename} has no line for image {image_id} (listed in images.txt); "
                        f"the file is damaged or from another copy of the dataset; {_FIX}"
                    )
            label = labels[image_id]
            if not label.isdigit() or not 1 <= int(label) <= n_classes:
                raise DatasetError(
                    f"{self.root / 'image_class_labels.txt'}: image {image_id} has class {label!r}, expected "
                    f"a class id from 1 to {n_classes} (classes.txt); {_FIX}"
                )
            if is_train[image_id] not in ("0", "1"):
                raise DatasetError(
                    f"{self.root / 'train_test_split.txt'}: image {image_id} has {is_train[image_id]!r}, "
                    f"expected 1 (train) or 0 (test); {_FIX}"
                )
            split = "train" if is_train[image_id] == "1" else "test"
            relative = PurePosixPath(images[image_id].replace("\\", "/"))
            if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] and ":" in relative.parts[0]:
                raise DatasetError(
                    f"{self.root / 'images.txt'}: image {image_id} has the path {images[image_id]!r}, which leaves "
                    f"the dataset's images/ folder; paths must be relative and stay inside it. {_FIX}"
                )
            path = self.root / "images" / relative
            splits[split].append(Sample(path=str(path), label=int(label) - 1))
        splits["trainval"] = splits["train"]
        splits["train"], splits["val"] = self._carve_val(splits["trainval"])
        return splits

    def _carve_val(self, samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        """Split the official training samples into (train, val), per class, seeded (see the class docstring)."""
        import numpy as np

        rng = np.random.default_rng(self.split_seed)
        labels = np.array([s.label for s in samples], dtype=np.int64)
        is_val = np.zeros(len(samples), dtype=bool)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            if len(rows) < 2:
                continue  # a class with one training image keeps it for training
            n_val = min(len(rows) - 1, max(1, round(self.val_fraction * len(rows))))
            is_val[rng.choice(rows, n_val, replace=False)] = True
        return ([s for s, v in zip(samples, is_val) if not v], [s for s, v in zip(samples, is_val) if v])

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"val_fraction": self.val_fraction, "split_seed": self.split_seed,
                     "val_carved_from": "official train split"})
        return info

    def _load_split(self, split: str) -> list[Sample]:
        """Both splits are read at construction (so damaged files fail early); this only returns one."""
        return self._split_cache[split]

    def _attribute_names_file(self) -> Path:
        """Where ``attributes.txt`` is: under ``attributes/``, in the root, or beside the root."""
        candidates = [
            self.root / "attributes" / "attributes.txt",
            self.root / "attributes.txt",
            self.root.parent / "attributes.txt",
        ]
        for path in candidates:
            if path.is_file():
                return path
        raise DatasetError(
            "CUB attribute names (attributes.txt) not found; looked at "
            + ", ".join(str(p) for p in candidates)
            + f". The official archive puts it beside {_FOLDER}/; {_FIX}"
        )

    def attribute_names(self) -> list[str]:
        """CUB's attribute names (``has_bill_shape::dagger`` ...) in attribute-id order."""
        path = self._attribute_names_file()
        return _contiguous(self._read_table(path, ("attribute id", "attribute name")), path, "attribute")

    def attribute_percentages(self) -> list[list[float]]:
        """Per class (label order), the percentage (0-100) of its images showing each attribute."""
        names = self.attribute_names()
        path = self.root / "attributes" / "class_attribute_labels_continuous.txt"
        if not path.is_file():
            raise DatasetError(f"CUB class attribute percentages not found: {path}; {_FIX}")
        rows: list[list[float]] = []
        for lineno, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            try:
                row = [float(v) for v in line.split()]
            except ValueError:
                row = []
            if len(row) != len(names) or not all(0.0 <= v <= 100.0 for v in row):
                raise DatasetError(
                    f"{path}, line {lineno}: expected {len(names)} percentages from 0 to 100 (one per "
                    f"attribute in attributes.txt), got {line.strip()[:80]!r}; {_FIX}"
                )
            rows.append(row)
        if len(rows) != len(self.classnames):
            raise DatasetError(f"{path} has {len(rows)} rows, expected one per class ({len(self.classnames)}); {_FIX}")
        return rows

    def attribute_descriptors(self, threshold: float = 50.0) -> dict[str, list[str]]:
        """Descriptors per class from the attributes at least ``threshold`` percent of its images show.

        Within a class the descriptors are ordered by percentage (highest first), then attribute id. A
        class with no attribute above the threshold gets an empty list.
        """
        phrases = []
        for attribute_id, name in enumerate(self.attribute_names(), 1):
            try:
                phrases.append(cub_attribute_phrase(name))
            except DatasetError as exc:
                raise DatasetError(f"{self._attribute_names_file()}, attribute {attribute_id}: {exc}") from None
        descriptors: dict[str, list[str]] = {}
        for classname, row in zip(self.classnames, self.attribute_percentages(), strict=True):
            chosen = sorted((-pct, i) for i, pct in enumerate(row) if pct >= threshold)
            unique: dict[str, None] = {phrases[i]: None for _, i in chosen}
            descriptors[classname] = list(unique)
        empty = sum(1 for d in descriptors.values() if not d)
        if empty:
            logger.info("%d CUB classes have no attribute at or above %.1f%%", empty, threshold)
        return descriptors


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 annotation file (``DatasetError`` naming the file when it is not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start}); the file is damaged; {_FIX}") from None


def _contiguous(table: dict[int, str], path: Path, what: str) -> list[str]:
    """The values of an ``{id: value}`` table whose ids must run 1..N, in id order."""
    if not table:
        raise DatasetError(f"{path} lists no {what}s; {_FIX}")
    expected = list(range(1, len(table) + 1))
    if sorted(table) != expected:
        missing = min(set(expected) - set(table))
        raise DatasetError(f"{path}: {what} ids must run 1..{len(table)}, but {what} {missing} is missing; {_FIX}")
    return [table[i] for i in expected]
