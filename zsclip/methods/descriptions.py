"""Classification by description, CbD (Menon & Vondrick, ICLR 2023; METHODS.md §1).

Each class is scored by the mean cosine between the image and "{class}, which is/has {descriptor}" over
the class's descriptors. Descriptors come from a file (CbD/CuPL/DDS formats), from a dataset's attribute
annotations (``attributes``, CUB), or from the dataset card's default file.

By default descriptors are cleaned (``pool.clean``) and phrased by their first word. ``published_quirk``
reproduces the authors' texts exactly instead: descriptors as written (no cleaning, no deduplication) and
raw case-sensitive prefix tests (``descriptor_phrase``). A class without descriptors falls back to the
class-name prompt in both modes (the authors' code encoded the broken text "classname, which has ").
"""

from __future__ import annotations

from typing import Any

from ..prompts import PromptSet, descriptor_phrase, format_template
from .base import Method, Param, dataset_of, register_method
from .pool import DescriptorSource, clean, resolve_descriptors

SOURCE_DOC = ("descriptor file (CbD/CuPL/DDS JSON), 'attributes' (the dataset's annotations), or None for the "
              "dataset card's file")


@register_method("descriptions")
class DescriptorPrompts(Method):
    """CbD: the mean cosine of the image with "{before}{class}, {phrase(descriptor)}{after}" over the class's
    descriptors."""

    parameters = {
        "descriptors": Param("source", SOURCE_DOC, nullable=True),
        "aggregation": Param(str, "how a class's descriptor cosines combine (CbD: mean)", choices=("mean", "max",
                                                                                                   "sum")),
        "before": Param(str, "text before each prompt, e.g. 'A photo of a '"),
        "after": Param(str, "text after each prompt, e.g. '.'"),
        "published_quirk": Param(bool, "phrase and keep descriptors exactly as the authors' code did (raw "
                                 "case-sensitive prefixes, no cleaning, no deduplication)"),
        "fallback_template": Param(str, "prompt for a class without descriptors"),
        "attribute_threshold": Param(float, "with descriptors=attributes: the % of a class's images that must "
                                     "show an attribute", low=0, high=100),
    }

    def __init__(self, descriptors: DescriptorSource = None, aggregation: str = "mean", before: str = "",
                 after: str = "", published_quirk: bool = False, fallback_template: str = "a photo of a {}.",
                 attribute_threshold: float = 50.0) -> None:
        self.descriptors = descriptors
        self.aggregation = aggregation
        self.before = before
        self.after = after
        self.published_quirk = published_quirk
        self.fallback_template = fallback_template
        self.attribute_threshold = attribute_threshold

    def text(self, classname: str, descriptor: str) -> str:
        """The encoded text of one (class, descriptor) pair."""
        return f"{self.before}{classname}, {descriptor_phrase(descriptor, self.published_quirk)}{self.after}"

    def build(self, ctx: Any) -> PromptSet:
        dataset = dataset_of(ctx)
        per_class_desc, source = resolve_descriptors(dataset, self.descriptors, self.attribute_threshold)
        per_class = []
        fallbacks = 0
        for name, descs in zip(dataset.classnames, per_class_desc):
            kept = list(descs) if self.published_quirk else clean(descs)
            if kept:
                per_class.append([(self.text(name, d), d) for d in kept])
            else:
                fallbacks += 1
                per_class.append([(format_template(self.fallback_template, name), "(class name)")])
        return PromptSet.from_lists(dataset.classnames, per_class, self.aggregation, "descriptions", {
            "descriptor_source": source, "classes_without_descriptors": fallbacks,
            "phrasing": "published-quirk" if self.published_quirk else "corrected"})

