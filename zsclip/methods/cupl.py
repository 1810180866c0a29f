"""CuPL (Pratt et al., ICCV 2023): many LLM-written sentences per class, averaged into one class weight.

The sentences are encoded as written (they name the class themselves); the class weight is the
renormalised mean of their embeddings (``prototype`` aggregation, METHODS.md §2).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..datasets import Dataset
from ..errors import ZsclipError
from ..paths import display_path, locate, resource_dir
from ..prompts import PromptSet, format_template, match_descriptors, read_descriptor_file


class CuplPrompts:
    """Class weights from CuPL sentences.

    Args:
        sentences: a CuPL/CbD-format JSON file or a mapping ``{classname: [sentence, ...]}``; ``None`` uses the
            dataset card's ``cupl`` file.
        fallback_template: prompt for a class without sentences.
    """

    def __init__(self, sentences: str | Path | Mapping[str, list[str]] | None = None,
                 fallback_template: str = "a photo of a {}.") -> None:
        self.sentences = sentences
        self.fallback_template = fallback_template

    def build(self, dataset: Dataset) -> PromptSet:
        source = self.sentences
        if source is None:
            default = dataset.card.get("cupl")
            if not default:
                raise ZsclipError(f"dataset {dataset.name!r} has no default CuPL file; pass --descriptors FILE "
                                  "(generate one with `zsclip describe --prompt-style cupl`)")
            source = resource_dir("prompts") / str(default)
        if isinstance(source, Mapping):
            per_class_text, origin = match_descriptors(source, dataset.classnames, "sentence mapping"), "mapping"
        else:
            path = locate(Path(source).expanduser())
            if not path.is_file():
                raise ZsclipError(f"--descriptors {source}: no such CuPL sentence file")
            per_class_text = match_descriptors(read_descriptor_file(path), dataset.classnames, str(path))
            origin = display_path(path)
        per_class = []
        for name, sentences in zip(dataset.classnames, per_class_text):
            clean = list(dict.fromkeys(s.strip() for s in sentences if s.strip()))
            fallback = [(format_template(self.fallback_template, name), "(class name)")]
            per_class.append([(s, s) for s in clean] or fallback)
        return PromptSet.from_lists(dataset.classnames, per_class, "prototype", "cupl", {"sentences": origin})
