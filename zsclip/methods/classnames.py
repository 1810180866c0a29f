"""Plain zero-shot: class names in one template or a template ensemble (METHODS.md §0).

Class weight = renormalised mean of the class's template embeddings (``prototype`` aggregation).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..datasets import Dataset
from ..prompts import PromptSet, format_template, load_templates


class ClassNamePrompts:
    """Prompts "template(classname)" for every template.

    Args:
        templates: a template spec (see ``zsclip.prompts.load_templates``: ``simple``, ``ensemble``, a file,
            a literal with ``{}``) or a list of templates.
    """

    def __init__(self, templates: str | Sequence[str] = "simple") -> None:
        self.templates = templates

    def build(self, dataset: Dataset) -> PromptSet:
        templates = (load_templates(self.templates, dataset.card) if isinstance(self.templates, str)
                     else list(self.templates))
        per_class = [[(format_template(t, c), t) for t in templates] for c in dataset.classnames]
        spec = self.templates if isinstance(self.templates, str) else "custom"
        return PromptSet.from_lists(dataset.classnames, per_class, "prototype", "classnames",
                                    {"templates": spec, "num_templates": len(templates)})
