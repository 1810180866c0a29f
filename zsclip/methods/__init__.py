"""Zero-shot methods: each turns a dataset (and its options) into a ``PromptSet``.

A method is a class with explicit constructor options and ``build(dataset) -> PromptSet``; the registry
maps the names the CLI accepts (``--method NAME``) to those classes.
"""

from __future__ import annotations

from typing import Any

from ..errors import ZsclipError
from .classnames import ClassNamePrompts
from .descriptions import DescriptorPrompts

METHODS: dict[str, type] = {
    "classnames": ClassNamePrompts,
    "descriptions": DescriptorPrompts,
}


def get_method(name: str, **options: Any) -> Any:
    """Instantiate the method registered as ``name`` with ``options`` (``None`` values are dropped)."""
    if name not in METHODS:
        raise ZsclipError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    return METHODS[name](**{k: v for k, v in options.items() if v is not None})


__all__ = ["METHODS", "ClassNamePrompts", "DescriptorPrompts", "get_method"]
