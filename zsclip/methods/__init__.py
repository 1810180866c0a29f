"""Zero-shot methods: each turns a dataset (and its options) into a ``PromptSet``.

A method is a class with explicit constructor options and ``build(dataset) -> PromptSet``; a randomised
method also has ``seeds`` and ``build(dataset, seed=...)``, and ``classify`` reports mean ± std over the
seeds. A per-image method (DDS) instead has ``fit(dataset, encoder, cache, store_options)``
returning a classifier with ``scores`` and ``explain``. The registry maps the names the CLI accepts
(``--method NAME``) to those classes.
"""

from __future__ import annotations

from typing import Any

from ..errors import ZsclipError
from .classnames import ClassNamePrompts
from .cupl import CuplPrompts
from .dds import DDS
from .descriptions import DescriptorPrompts
from .waffle import WafflePrompts

METHODS: dict[str, type] = {
    "classnames": ClassNamePrompts,
    "descriptions": DescriptorPrompts,
    "waffle": WafflePrompts,
    "cupl": CuplPrompts,
    "dds": DDS,
}


def get_method(name: str, **options: Any) -> Any:
    """Instantiate the method registered as ``name`` with ``options`` (``None`` values are dropped)."""
    if name not in METHODS:
        raise ZsclipError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    return METHODS[name](**{k: v for k, v in options.items() if v is not None})


__all__ = ["DDS", "METHODS", "ClassNamePrompts", "CuplPrompts", "DescriptorPrompts", "WafflePrompts", "get_method"]
