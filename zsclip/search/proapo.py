"""ProAPO (Qu et al., CVPR 2025; METHODS.md §5): evolutionary search over template sets, then per-class prompts."""

from __future__ import annotations

from collections.abc import Sequence


def template_library(type_words: Sequence[str], base: Sequence[str] | None = None) -> list[str]:
    """Stage 1's template library: CLIP's 80 ImageNet templates (lowercased) × the dataset's type words.

    Each template ``t`` and word ``w`` give ``t``; ``t`` with every "." replaced by ", a type of {w}.";
    ``t`` with " {}" replaced by " {w}: {}"; and, where ``t`` contains "photo", "photo"→``w`` and
    "photo"→"``w`` photo". Duplicates are dropped, first occurrence kept.
    """
    from ..prompts import load_templates

    base = [t.lower() for t in (base if base is not None else load_templates("openai-imagenet"))]
    out: list[str] = []
    for t in base:
        out.append(t)
        for w in type_words:
            out.append(t.replace(".", f", a type of {w}."))
            out.append(t.replace(" {}", f" {w}: {{}}"))
            if "photo" in t:
                out.append(t.replace("photo", w))
                out.append(t.replace("photo", f"{w} photo"))
    return list(dict.fromkeys(out))
