"""Zero-shot methods, one module each, registered by name (``@register_method``).

Two kinds (``zsclip.methods.base``): prompt methods ``build(ctx) -> PromptSet`` (class names, CbD
descriptions, WaffleCLIP, CuPL, REAL-Prompt) and fitted methods ``fit(ctx)`` then ``scores`` / ``explain``
(DDS, REAL-Linear). The CLI,
``explain``, the audit, the claims table and search jobs construct them through the registry:
``make_method(name, **params)``; ``parse_params`` reads ``--param NAME=VALUE`` options against each method's
declared parameters.
"""

from .base import (
    Method,
    Param,
    ParameterError,
    describe_method,
    jsonable_params,
    list_methods,
    make_method,
    method_class,
    parse_params,
    register_method,
)
from .classnames import ClassNamePrompts
from .cupl import CuplPrompts
from .dds import DDS
from .descriptions import DescriptorPrompts
from .pool import DescriptionPool, resolve_descriptors
from .real import RealLinear, RealPrompt
from .waffle import WafflePrompts

__all__ = [
    "DDS", "ClassNamePrompts", "CuplPrompts", "DescriptionPool", "DescriptorPrompts", "Method", "Param",
    "ParameterError", "RealLinear", "RealPrompt", "WafflePrompts", "describe_method", "jsonable_params",
    "list_methods", "make_method", "method_class", "parse_params", "register_method", "resolve_descriptors",
]
