"""Classification by description, CbD (Menon & Vondrick, ICLR 2023; METHODS.md §1).

Each class is scored by the mean cosine between the image and "{class}, which is/has {descriptor}" over
the class's descriptors. Descriptors come from a file (CbD/CuPL/DDS formats), from a dataset's attribute
annotations (``attributes``, CUB), or from the dataset card's default file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..datasets import Dataset
from ..errors import ZsclipError
from ..paths import display_path, locate, resource_dir
from ..prompts import (
    PromptSet,
    descriptor_phrase,
    format_template,
    match_descriptors,
    normalise_descriptor,
    read_descriptor_file,
)


def resolve_descriptors(dataset: Dataset, source: str | Path | Mapping[str, list[str]] | None,
                        attribute_threshold: float = 50.0) -> tuple[list[list[str]], str]:
    """Descriptors per class (in class order) and a name of where they came from.

    ``source``: a mapping, a file path, ``attributes`` (from the dataset's annotations), or ``None`` for the
    dataset card's default file (else its attributes, if it has them).
    """
    if isinstance(source, Mapping):
        return match_descriptors(source, dataset.classnames, "descriptor mapping"), "mapping"
    if source is None:
        default = dataset.card.get("descriptors")
        if default:
            source = resource_dir("prompts") / str(default)
        else:
            source = "attributes"
    if str(source) == "attributes":
        by_name = dataset.attribute_descriptors(attribute_threshold)
        return match_descriptors(by_name, dataset.classnames, f"{dataset.name} attributes"), \
            f"attributes(threshold={attribute_threshold:g})"
    path = locate(Path(source).expanduser())
    if not path.is_file():
        raise ZsclipError(f"--descriptors {source}: no such file (or use 'attributes' for annotation-based ones)")
    return match_descriptors(read_descriptor_file(path), dataset.classnames, str(path)), display_path(path)


class DescriptorPrompts:
    """CbD prompts: "{before}{class}, {phrase(descriptor)}{after}" per descriptor.

    Args:
        descriptors: see ``resolve_descriptors``.
        aggregation: ``mean`` (CbD: mean of cosines), ``max`` or ``sum``.
        before, after: text around each prompt, e.g. ``"A photo of a "`` and ``"."``.
        published_quirk: phrase descriptors as the authors' code did (``startswith('a')``).
        fallback_template: prompt for a class without descriptors.
        attribute_threshold: with ``attributes``, the percentage of a class's images that must show an attribute.
    """

    def __init__(self, descriptors: str | Path | Mapping[str, list[str]] | None = None, aggregation: str = "mean",
                 before: str = "", after: str = "", published_quirk: bool = False,
                 fallback_template: str = "a photo of a {}.", attribute_threshold: float = 50.0) -> None:
        if aggregation not in ("mean", "max", "sum"):
            raise ZsclipError(f"descriptions aggregate by mean, max or sum, not {aggregation!r}")
        self.descriptors = descriptors
        self.aggregation = aggregation
        self.before = before
        self.after = after
        self.published_quirk = published_quirk
        self.fallback_template = fallback_template
        self.attribute_threshold = attribute_threshold

    def build(self, dataset: Dataset) -> PromptSet:
        per_class_desc, source = resolve_descriptors(dataset, self.descriptors, self.attribute_threshold)
        per_class = []
        fallbacks = 0
        for name, descs in zip(dataset.classnames, per_class_desc):
            cleaned = list(dict.fromkeys(d for d in (normalise_descriptor(x) for x in descs) if d))
            if cleaned:
                per_class.append([(f"{self.before}{name}, {descriptor_phrase(d, self.published_quirk)}{self.after}",
                                   d) for d in cleaned])
            else:
                fallbacks += 1
                per_class.append([(format_template(self.fallback_template, name), "(class name)")])
        return PromptSet.from_lists(dataset.classnames, per_class, self.aggregation, "descriptions", {
            "descriptors": source, "aggregation": self.aggregation, "before": self.before, "after": self.after,
            "published_quirk": self.published_quirk, "classes_without_descriptors": fallbacks,
        })
