"""CuPL (Pratt et al., ICCV 2023): many LLM-written sentences per class, averaged into one class weight.

The sentences are encoded as written (they name the class themselves); the class weight is the
renormalised mean of their embeddings (``prototype`` aggregation, METHODS.md §2). Every sentence counts,
duplicates included, as in the authors' code (their released files hold about 4% duplicates, which weigh
twice). This method also consumes any per-class prompt file, e.g. the prompt sets ProAPO's search writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ZsclipError
from ..paths import display_path, locate, resource_dir
from ..prompts import PromptSet, format_template, match_descriptors, read_descriptor_file
from .base import Method, Param, dataset_of, register_method


@register_method("cupl")
class CuplPrompts(Method):
    """CuPL: the renormalised mean of each class's LLM sentences (or of any per-class prompt file)."""

    parameters = {
        "sentences": Param("source", "a {classname: [sentence, ...]} JSON file or mapping; None: the dataset "
                           "card's CuPL file", nullable=True),
        "fallback_template": Param(str, "prompt for a class without sentences"),
    }

    def __init__(self, sentences: str | Path | Mapping[str, Sequence[str]] | None = None,
                 fallback_template: str = "a photo of a {}.") -> None:
        self.sentences = sentences
        self.fallback_template = fallback_template

    def build(self, ctx: Any) -> PromptSet:
        dataset = dataset_of(ctx)
        source = self.sentences
        if source is None:
            default = dataset.card.get("cupl")
            if not default:
                raise ZsclipError(f"dataset {dataset.name!r} has no default CuPL file; pass -p sentences=FILE "
                                  "(generate one with `zsclip describe --prompt-style cupl`)")
            source = resource_dir("prompts") / str(default)
        if isinstance(source, Mapping):
            per_class_text, origin = match_descriptors(source, dataset.classnames, "sentence mapping"), "mapping"
        else:
            path = locate(Path(source).expanduser())
            if not path.is_file():
                raise ZsclipError(f"sentences={source}: no such CuPL sentence file")
            per_class_text = match_descriptors(read_descriptor_file(path), dataset.classnames, str(path))
            origin = display_path(path)
        per_class, fallbacks, duplicates = [], 0, 0
        for name, sentences in zip(dataset.classnames, per_class_text):
            kept = [s.strip() for s in sentences if s.strip()]
            duplicates += len(kept) - len(set(kept))
            if not kept:
                fallbacks += 1
                kept_pairs = [(format_template(self.fallback_template, name), "(class name)")]
            else:
                kept_pairs = [(s, s) for s in kept]
            per_class.append(kept_pairs)
        return PromptSet.from_lists(dataset.classnames, per_class, "prototype", "cupl", {
            "sentence_source": origin, "classes_without_sentences": fallbacks, "duplicate_sentences_kept": duplicates})
