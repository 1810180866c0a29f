"""Plain zero-shot: class names in one template or a template ensemble (METHODS.md §0).

Class weight = renormalised mean of the class's template embeddings (``prototype`` aggregation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..prompts import PromptSet, format_template, load_templates
from .base import Method, Param, dataset_of, register_method


@register_method("classnames")
class ClassNamePrompts(Method):
    """Class names in a template or a template ensemble; class weight = renormalised mean of the template texts."""

    parameters = {
        "templates": Param("templates", "simple ('a photo of a {}.'), ensemble (the dataset card's, else CLIP's 80), "
                           "openai-imagenet, a template file, a literal with {}, or a list of templates"),
    }

    def __init__(self, templates: str | Sequence[str] = "simple") -> None:
        self.templates = templates

    def build(self, ctx: Any) -> PromptSet:
        dataset = dataset_of(ctx)
        templates = (load_templates(self.templates, dataset.card) if isinstance(self.templates, str)
                     else list(self.templates))
        per_class = [[(format_template(t, c), t) for t in templates] for c in dataset.classnames]
        return PromptSet.from_lists(dataset.classnames, per_class, "prototype", "classnames",
                                    {"num_templates": len(templates)})
