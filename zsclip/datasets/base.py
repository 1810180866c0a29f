"""The dataset interface every loader implements, and the registry that names loaders.

A dataset is a list of class names plus, per split, a list of samples (an image reference and an
integer label in class-name order). Loaders read annotation files only; pixels are read by
``Dataset.load_image`` when an image store is built, never at construction.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DatasetError, option


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``path`` is what ``Dataset.load_image`` reads, ``label`` indexes ``classnames``."""

    path: str
    label: int


class Dataset(abc.ABC):
    """Base class of dataset loaders.

    Subclasses set ``name``, ``classnames``, ``root`` and implement ``_load_split``. ``card`` holds the
    dataset card (domain words, templates, download address) when one ships with zsclip.
    """

    name: str = ""
    classnames: list[str]
    root: Path | None = None
    splits: tuple[str, ...] = ()
    #: the split ``classify`` evaluates on when none is given
    default_split: str = "test"
    #: which split plays which role of a run (``fit``: training/selection, ``choose``: validation, ``eval``:
    #: the report); a role whose split the dataset lacks is left out (see ``zsclip.context``)
    split_roles: dict[str, str] = {"fit": "train", "choose": "val", "eval": "test"}
    card: dict[str, Any] = {}

    def __init__(self) -> None:
        self._split_cache: dict[str, list[Sample]] = {}

    # -- what subclasses implement -------------------------------------------------------------
    @abc.abstractmethod
    def _load_split(self, split: str) -> list[Sample]:
        """Read the annotation files of ``split`` (already checked to be in ``splits``)."""

    # -- public API ----------------------------------------------------------------------------
    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` in a stable order (raises ``DatasetError`` for an unknown split)."""
        if split not in self.splits:
            raise DatasetError(
                f"dataset {self.name!r} has no split {split!r}; its splits are: {', '.join(self.splits)}"
            )
        if split not in self._split_cache:
            self._split_cache[split] = self._load_split(split)
        return self._split_cache[split]

    def role_splits(self) -> dict[str, str]:
        """``{role: split}`` for the roles whose split this dataset has; ``eval`` defaults to ``default_split``."""
        roles = {r: s for r, s in self.split_roles.items() if s in self.splits}
        if self.default_split in self.splits:
            roles.setdefault("eval", self.default_split)
        return roles

    def load_image(self, sample: Sample) -> Image.Image:
        """Read one image as RGB. Raises on an unreadable file; store builders count and skip those."""
        with Image.open(sample.path) as img:
            img.load()
            return img.convert("RGB")

    def image_signature(self, sample: Sample) -> tuple[int, int]:
        """(size in bytes, modification time in ns) of the sample's file, or (-1, -1) when it has none.

        Image stores record it per image to notice replaced, restored or newly readable files.
        """
        try:
            st = os.stat(sample.path)
        except OSError:
            return (-1, -1)
        return (st.st_size, st.st_mtime_ns)

    def attribute_descriptors(self, threshold: float = 50.0) -> dict[str, list[str]]:
        """LLM-free descriptors from attribute annotations, for datasets that have them."""
        raise DatasetError(
            f"dataset {self.name!r} has no attribute annotations; pass a descriptor file with "
            f"{option('-p descriptors=FILE', 'descriptors=FILE')} instead"
        )

    def split_fingerprint(self, split: str) -> str:
        """A short hash of (class names, sample paths, labels): a store is valid for exactly this list."""
        h = hashlib.sha256()
        h.update(json.dumps(self.classnames).encode())
        for s in self.samples(split):
            h.update(f"{s.path}\t{s.label}\n".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (name, root, classes, split sizes) for records and ``datasets info``."""
        return {
            "name": self.name,
            "root": str(self.root) if self.root else None,
            "num_classes": len(self.classnames),
            "splits": {s: len(self.samples(s)) for s in self.splits},
        }


DatasetFactory = Callable[..., Dataset]
_REGISTRY: dict[str, tuple[DatasetFactory, str]] = {}


def register_dataset(name: str, summary: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register a loader under ``name``; the factory is called as ``factory(root=..., **options)``."""

    def wrap(factory: DatasetFactory) -> DatasetFactory:
        _REGISTRY[name] = (factory, summary)
        return factory

    return wrap


def get_dataset(name: str, root: str | Path | None = None, **options: Any) -> Dataset:
    """Construct the dataset registered as ``name`` (reading its annotation files under ``root``)."""
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_REGISTRY))}")
    factory, _ = _REGISTRY[name]
    return factory(root=Path(root).expanduser() if root is not None else None, **options)


def list_datasets() -> list[tuple[str, str]]:
    """(name, one-line summary) for every registered dataset, sorted by name."""
    return sorted((name, summary) for name, (_, summary) in _REGISTRY.items())
