"""The method contract: two kinds of method, explicit parameters validated in one place, one registry.

A **prompt method** turns a run context into a ``PromptSet`` (texts per class and how their scores
combine): ``build(ctx) -> PromptSet``. A **fitted method** learns from the context's ``fit`` (and
``choose``) image stores: ``fit(ctx) -> self``, then ``scores(V)`` and ``explain(v, label)``; what fitting
learned lives in attributes ending in ``_`` and in ``fit_info_`` (facts for the run record, kept apart
from the parameters).

Both are constructed from explicit keyword parameters, as scikit-learn estimators are: the constructor
signature is the list of parameters (``get_params()`` / ``set_params()``), each declared with a
constraint in ``parameters`` (type, range, choices, a one-line doc). ``check_params`` validates them with
one message form ("the 'k' parameter of dds must be an int ≥ 1; got 0"). A randomised method has a
``seed`` parameter and sets ``randomised = True``; the pipeline runs its seeds and reports mean ± std.
``@register_method("name")`` adds a class to the registry that the CLI, ``explain``, the audit, the
claims table and search jobs use (``make_method``, ``method_class``, ``list_methods``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import ZsclipError


class ParameterError(ZsclipError):
    """A method parameter is unknown or has a value outside its declared constraint."""


@dataclass(frozen=True)
class Param:
    """The declared constraint of one parameter.

    Args:
        type: ``int``, ``float``, ``bool``, ``str``, ``"source"`` (a file path, a keyword such as
            ``attributes`` or a ``{class: [text, ...]}`` mapping), ``"floats"`` (a list of floats),
            ``"templates"`` (a template spec or a list of templates).
        doc: one line for ``zsclip methods show``.
        low, high: inclusive bounds for numbers.
        choices: the allowed strings.
        nullable: ``None`` is allowed (its meaning is in ``doc``).
    """

    type: Any
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False

    def describe(self) -> str:
        """The constraint in words: "an int ≥ 1", "one of mean, max", "a float in [0, 1] or None"."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.type is bool:
            text = "a bool"
        elif self.type in (int, float):
            name = "an int" if self.type is int else "a float"
            if self.low is not None and self.high is not None:
                text = f"{name} in [{self.low:g}, {self.high:g}]"
            elif self.low is not None:
                text = f"{name} ≥ {self.low:g}"
            elif self.high is not None:
                text = f"{name} ≤ {self.high:g}"
            else:
                text = f"a finite {name.split()[1]}"
        elif self.type == "floats":
            text = "a non-empty list of finite floats"
        elif self.type == "source":
            text = "a file path, a keyword or a {class: [text, ...]} mapping"
        elif self.type == "templates":
            text = "a template spec (a name, a file, a literal with {}) or a non-empty list of templates"
        else:
            text = "a string"
        return text + (" or None" if self.nullable else "")

    def check(self, method: str, name: str, value: Any) -> None:
        """Raise ``ParameterError`` (one message form) when ``value`` breaks the constraint."""
        if value is None:
            if self.nullable:
                return
            self._fail(method, name, value)
        ok = True
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif self.type is str:
            ok = isinstance(value, str)
        elif self.type == "floats":
            ok = (isinstance(value, (list, tuple)) and len(value) > 0
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in value))
        elif self.type == "templates":
            ok = (isinstance(value, str) and value.strip() != "") or (
                isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(t, str) for t in value))
        elif self.type == "source":
            ok = isinstance(value, (str, Path)) or (
                isinstance(value, Mapping) and all(isinstance(v, (list, tuple)) for v in value.values()))
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.type in (int, float):
            ok = (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        if not ok:
            self._fail(method, name, value)

    def _fail(self, method: str, name: str, value: Any) -> None:
        raise ParameterError(f"the {name!r} parameter of {method} must be {self.describe()}; got {value!r}")

    def parse(self, method: str, name: str, text: str) -> Any:
        """Convert a command-line string (``k=5``'s ``5``) to this parameter's type, then check it."""
        raw = text.strip()
        value: Any
        if self.nullable and raw.lower() in ("none", "null", ""):
            value = None
        elif self.type is bool:
            low = raw.lower()
            if low in ("true", "yes", "1", "on"):
                value = True
            elif low in ("false", "no", "0", "off"):
                value = False
            else:
                value = raw
        elif self.type in (int, float):
            try:
                value = int(raw) if self.type is int else float(raw)
            except ValueError:
                value = raw
        elif self.type == "floats":
            try:
                value = [float(x) for x in raw.split(",") if x.strip()]
            except ValueError:
                value = raw
        else:
            value = raw
        self.check(method, name, value)
        return value


class Method:
    """Base of every method: parameters from the constructor signature, declared constraints, the record."""

    #: the registered name (set by ``register_method``)
    name: ClassVar[str] = ""
    #: ``prompt`` (``build(ctx) -> PromptSet``) or ``fitted`` (``fit(ctx)``, ``scores``, ``explain``)
    kind: ClassVar[str] = "prompt"
    #: True for methods with a ``seed`` parameter whose result depends on it
    randomised: ClassVar[bool] = False
    #: seeds the pipeline runs by default for a randomised method
    default_seeds: ClassVar[int] = 1
    #: parameter name → declared constraint (every constructor parameter must be declared)
    parameters: ClassVar[dict[str, Param]] = {}

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's keyword parameters, in signature order."""
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self"
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {n: sig.parameters[n].default for n in cls.param_names()}

    def get_params(self) -> dict[str, Any]:
        """The parameters this method was constructed with (exactly what recreates it)."""
        return {n: getattr(self, n) for n in self.param_names()}

    def set_params(self, **params: Any) -> Method:
        """Set parameters (validated); returns ``self``."""
        known = self.param_names()
        for key, value in params.items():
            if key not in known:
                raise unknown_parameter(self.name or type(self).__name__, key, known)
            setattr(self, key, value)
        self.check_params()
        return self

    def check_params(self) -> None:
        """Validate every parameter against its declared constraint (one message form)."""
        method = self.name or type(self).__name__
        for key in self.param_names():
            self.parameters[key].check(method, key, getattr(self, key))

    def __repr__(self) -> str:
        defaults = self.param_defaults()
        changed = {k: v for k, v in self.get_params().items() if defaults.get(k, inspect.Parameter.empty) != v}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def unknown_parameter(method: str, key: str, known: Sequence[str]) -> ParameterError:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ParameterError(f"{method} has no parameter {key!r}{hint}; its parameters are: {', '.join(known)} "
                          f"(`zsclip methods show {method}`)")


M = TypeVar("M", bound=type[Method])
_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a ``Method`` subclass under ``name`` (checks its parameter declarations)."""

    def wrap(cls: M) -> M:
        missing = [p for p in cls.param_names() if p not in cls.parameters]
        if missing:
            raise TypeError(f"{cls.__name__} does not declare parameters {missing} in `parameters`")
        if cls.randomised and "seed" not in cls.param_names():
            raise TypeError(f"{cls.__name__} is randomised but has no 'seed' parameter")
        if cls.kind not in ("prompt", "fitted"):
            raise TypeError(f"{cls.__name__}.kind must be 'prompt' or 'fitted'")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``."""
    if name not in _REGISTRY:
        raise ZsclipError(f"unknown method {name!r}; methods: {', '.join(_REGISTRY)} (`zsclip methods list`)")
    return _REGISTRY[name]


def make_method(name: str, **params: Any) -> Method:
    """Construct the method registered as ``name`` with ``params`` (unknown names and bad values raise)."""
    cls = method_class(name)
    known = cls.param_names()
    for key in params:
        if key not in known:
            raise unknown_parameter(name, key, known)
    method = cls(**params)
    method.check_params()
    return method


def parse_params(method: str | type[Method], pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=5", "form=classname"]`` → ``{"k": 5, "form": "classname"}``, typed and checked against the declared
    parameters of ``method`` (a registered name, or a ``Method`` class such as the description audit) — the one
    parser behind every ``--param``/``-p`` option."""
    cls = method_class(method) if isinstance(method, str) else method
    name = cls.name or cls.__name__
    known = cls.param_names()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ParameterError(f"--param {pair!r} is not NAME=VALUE; {name}'s parameters are: {', '.join(known)}")
        if key not in known:
            raise unknown_parameter(name, key, known)
        if key in out:
            raise ParameterError(f"--param {key} is given twice")
        out[key] = cls.parameters[key].parse(name, key, text)
    return out


def list_methods() -> list[type[Method]]:
    """Every registered method class, in registration order."""
    return list(_REGISTRY.values())


def describe_method(method: str | type[Method]) -> dict[str, Any]:
    """Name, kind, summary and each parameter's default, constraint and doc (``zsclip methods show``)."""
    cls = method_class(method) if isinstance(method, str) else method
    name = cls.name or cls.__name__
    doc = inspect.getdoc(cls) or ""
    defaults = cls.param_defaults()
    return {
        "name": name, "kind": cls.kind, "randomised": cls.randomised,
        "default_seeds": cls.default_seeds if cls.randomised else None,
        "summary": doc.split("\n\n", 1)[0].replace("\n", " "),
        "module_doc": (inspect.getdoc(inspect.getmodule(cls)) or "").split("\n\n", 1)[0].replace("\n", " "),
        "parameters": [{"name": p, "default": defaults[p], "constraint": cls.parameters[p].describe(),
                        "doc": cls.parameters[p].doc} for p in cls.param_names()],
    }


def jsonable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as JSON values (paths as strings, tuples as lists, mappings as dicts of lists)."""
    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in params.items()}


def dataset_of(ctx: Any) -> Any:
    """The dataset of a run context; a bare ``Dataset`` is accepted too (prompt methods in a notebook)."""
    from ..datasets import Dataset

    return ctx if isinstance(ctx, Dataset) else ctx.dataset
