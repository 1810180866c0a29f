"""Where descriptions come from, how they are cleaned, and the pool of all classes' descriptions.

One place for what CbD, WaffleCLIP, DDS and the description audit all need:

* ``resolve_descriptors``: a class-ordered list of raw descriptors from a file (CbD/CuPL/DDS formats), a
  mapping, a dataset's attribute annotations (``attributes``) or the dataset card's default file;
* ``clean``: LLM clean-up of one class's list (``normalise_descriptor``, empty ones dropped, duplicates
  dropped keeping the first);
* ``DescriptionPool``: the deduplicated union of every class's cleaned descriptions, with the pool indices
  each class brought. ``order="sorted"`` builds the pool as the DDS authors do (each class's list sorted
  alphabetically, classes in label order), which decides what "a class's own first m" means for DDS's
  fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ZsclipError
from ..paths import display_path, locate, resource_dir
from ..prompts import match_descriptors, normalise_descriptor, read_descriptor_file

if TYPE_CHECKING:
    from ..datasets import Dataset

DescriptorSource = str | Path | Mapping[str, Sequence[str]] | None


def resolve_descriptors(dataset: Dataset, source: DescriptorSource,
                        attribute_threshold: float = 50.0) -> tuple[list[list[str]], str]:
    """Raw descriptors per class (in class order) and a name of where they came from.

    ``source``: a mapping, a file path, ``attributes`` (from the dataset's annotations), or ``None`` for the
    dataset card's default file (else its attributes, if it has them).
    """
    if isinstance(source, Mapping):
        return match_descriptors(source, dataset.classnames, "descriptor mapping"), "mapping"
    if source is None:
        default = dataset.card.get("descriptors")
        source = resource_dir("prompts") / str(default) if default else "attributes"
    if str(source) == "attributes":
        by_name = dataset.attribute_descriptors(attribute_threshold)
        return match_descriptors(by_name, dataset.classnames, f"{dataset.name} attributes"), \
            f"attributes(threshold={attribute_threshold:g})"
    path = locate(Path(source).expanduser())
    if not path.is_file():
        raise ZsclipError(f"descriptors={source}: no such file (or use 'attributes' for annotation-based ones)")
    return match_descriptors(read_descriptor_file(path), dataset.classnames, str(path)), display_path(path)


def clean(descriptors: Sequence[str]) -> list[str]:
    """One class's descriptors normalised (``normalise_descriptor``), empty ones dropped, first of duplicates kept."""
    return list(dict.fromkeys(d for d in map(normalise_descriptor, descriptors) if d))


@dataclass(frozen=True)
class DescriptionPool:
    """The deduplicated cleaned descriptions of all classes, and which of them each class brought.

    ``own[c]`` lists class ``c``'s pool indices in its cleaned file order; ``own_in_pool_order(c)`` in pool
    order (ascending index).
    """

    texts: tuple[str, ...]
    own: tuple[tuple[int, ...], ...]
    order: str = "file"

    @classmethod
    def from_lists(cls, per_class: Sequence[Sequence[str]], order: str = "file") -> DescriptionPool:
        """Pool ``per_class`` raw descriptors: ``order="file"`` adds them in file order, ``"sorted"`` adds each
        class's cleaned list sorted (the DDS authors' pool)."""
        if order not in ("file", "sorted"):
            raise ZsclipError(f"pool order must be 'file' or 'sorted', not {order!r}")
        cleaned = [clean(ds) for ds in per_class]
        index: dict[str, int] = {}
        for ds in cleaned:
            for d in (sorted(ds) if order == "sorted" else ds):
                index.setdefault(d, len(index))
        return cls(tuple(index), tuple(tuple(index[d] for d in ds) for ds in cleaned), order)

    @property
    def per_class_texts(self) -> list[list[str]]:
        """Each class's cleaned descriptions, in file order."""
        return [[self.texts[i] for i in ids] for ids in self.own]

    def own_in_pool_order(self, c: int) -> list[int]:
        return sorted(self.own[c])

    def __len__(self) -> int:
        return len(self.texts)
