"""The parameter contract every method shares, unit by unit: constraints in words, checks at their bounds, the
command-line parser, the registry's refusals, and the description ``zsclip methods show`` prints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from zsclip.errors import ZsclipError
from zsclip.methods import Param, ParameterError, make_method, method_class, parse_params
from zsclip.methods.base import (
    Method,
    dataset_of,
    describe_method,
    jsonable_params,
    register_method,
    unknown_parameter,
)


@pytest.mark.parametrize("param, words", [
    (Param(int, "d", low=1), "an int ≥ 1"),
    (Param(float, "d", low=0, high=1), "a float in [0, 1]"),
    (Param(float, "d", high=2.5), "a float ≤ 2.5"),
    (Param(float, "d"), "a finite float"),
    (Param(int, "d"), "a finite int"),
    (Param(bool, "d"), "a bool"),
    (Param(str, "d", choices=("mean", "max")), "one of mean, max"),
    (Param(str, "d"), "a string"),
    (Param("floats", "d"), "a non-empty list of finite floats"),
    (Param("source", "d", nullable=True), "a file path, a keyword or a {class: [text, ...]} mapping or None"),
    (Param("templates", "d"), "a template spec (a name, a file, a literal with {}) or a non-empty list of templates"),
    (Param(float, "d", low=0, nullable=True), "a float ≥ 0 or None"),
])
def test_constraints_are_described_in_words(param, words):
    assert param.describe() == words


@pytest.mark.parametrize("param, good, bad", [
    (Param(int, "d", low=1, high=3), [1, 3], [0, 4, 2.0, True, "2", None]),
    (Param(float, "d", low=0, high=1), [0, 1, 0.5, 1.0], [-0.01, 1.01, math.nan, math.inf, False, "0.5"]),
    (Param(float, "d", nullable=True), [None, -7.5], [math.inf]),
    (Param(bool, "d"), [True, False], [0, 1, "true", None]),
    (Param(str, "d", choices=("a", "b")), ["a", "b"], ["c", 1, None]),
    (Param(str, "d"), ["", "x"], [3, None]),
    (Param("floats", "d"), [[1, 2.5], (0.0,)], [[], [1, math.nan], [True], "1,2", [1, "2"]]),
    (Param("templates", "d"), ["a {}", ["x", "y"]], ["", "   ", [], ["x", 3], 5]),
    (Param("source", "d"), ["attributes", Path("f.json"), {"c": ["x"]}, {"c": ("x",)}], [{"c": "x"}, 3, None]),
])
def test_checks_accept_the_constraint_and_refuse_everything_else(param, good, bad):
    for value in good:
        param.check("m", "p", value)
    for value in bad:
        with pytest.raises(ParameterError, match=r"^the 'p' parameter of m must be .+; got "):
            param.check("m", "p", value)


def test_a_refusal_names_parameter_method_constraint_and_value():
    with pytest.raises(ParameterError) as info:
        Param(int, "d", low=1).check("dds", "k", 0)
    assert str(info.value) == "the 'k' parameter of dds must be an int ≥ 1; got 0"


@pytest.mark.parametrize("param, text, value", [
    (Param(bool, "d"), " Yes ", True), (Param(bool, "d"), "on", True), (Param(bool, "d"), "1", True),
    (Param(bool, "d"), "true", True), (Param(bool, "d"), "OFF", False), (Param(bool, "d"), "no", False),
    (Param(bool, "d"), "0", False), (Param(bool, "d"), "false", False),
    (Param(int, "d"), " 5 ", 5), (Param(float, "d"), "2.5", 2.5), (Param(float, "d"), "3", 3.0),
    (Param(float, "d", nullable=True), "None", None), (Param(float, "d", nullable=True), "null", None),
    (Param(float, "d", nullable=True), "", None),
    (Param("floats", "d"), "0, 0.5,,2", [0.0, 0.5, 2.0]),
    (Param(str, "d"), "  mean ", "mean"),
])
def test_command_line_strings_are_converted_to_the_parameter_type(param, text, value):
    got = param.parse("m", "p", text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("param, text", [
    (Param(bool, "d"), "maybe"), (Param(int, "d"), "2.5"), (Param(float, "d"), "much"),
    (Param("floats", "d"), "1,x"), (Param(float, "d"), "none"), (Param(int, "d", low=1), "0"),
])
def test_unparseable_command_line_strings_get_the_one_message_form(param, text):
    with pytest.raises(ParameterError, match=f"^the 'p' parameter of m must be {param.describe()}; got "):
        param.parse("m", "p", text)


def test_parse_params_types_and_checks_each_pair():
    assert parse_params("dds", ["k=5", " form=classname", "weight-grid=0,1", "weight=none"]) == {
        "k": 5, "form": "classname", "weight_grid": [0.0, 1.0], "weight": None}
    with pytest.raises(ParameterError, match=r"^--param 'k' is not NAME=VALUE; dds's parameters are: descriptors, k"):
        parse_params("dds", ["k"])
    with pytest.raises(ParameterError, match="is not NAME=VALUE"):
        parse_params("dds", ["=3"])
    with pytest.raises(ParameterError, match="^--param k is given twice$"):
        parse_params("dds", ["k=1", "k=2"])
    with pytest.raises(ParameterError, match="the 'k' parameter of dds must be an int ≥ 1; got 0"):
        parse_params("dds", ["k=0"])


def test_unknown_names_suggest_the_closest_and_list_the_parameters():
    error = unknown_parameter("dds", "kk", ["k", "m"])
    assert str(error) == ("dds has no parameter 'kk' (did you mean 'k'?); its parameters are: k, m "
                          "(`zsclip methods show dds`)")
    assert "did you mean" not in str(unknown_parameter("dds", "zzz", ["k", "m"]))
    with pytest.raises(ParameterError, match="dds has no parameter 'kk'"):
        make_method("dds", kk=3)
    with pytest.raises(ParameterError, match="dds has no parameter 'kk'"):
        make_method("dds").set_params(kk=3)
    with pytest.raises(ZsclipError, match=r"unknown method 'nope'; methods: .*dds.*\(`zsclip methods list`\)"):
        method_class("nope")


def test_set_params_validates_and_get_params_recreates_the_method():
    dds = make_method("dds", k=2)
    assert dds.set_params(m=4) is dds and dds.get_params()["m"] == 4
    with pytest.raises(ParameterError, match="'m' parameter of dds"):
        dds.set_params(m=0)
    again = make_method("dds", **make_method("dds", k=2, m=4).get_params())
    assert again.get_params() == make_method("dds", k=2, m=4).get_params()
    assert repr(make_method("dds", k=2, form="classname")) == "DDS(k=2, form='classname')"
    assert repr(make_method("dds")) == "DDS()"


def test_the_registry_refuses_undeclared_unseeded_and_unknown_kinds():
    class Undeclared(Method):
        parameters = {"a": Param(int, "d")}

        def __init__(self, a: int = 1, b: int = 2) -> None:
            self.a, self.b = a, b

    with pytest.raises(TypeError, match=r"Undeclared does not declare parameters \['b'\]"):
        register_method("test-undeclared")(Undeclared)

    class Unseeded(Method):
        randomised = True

    with pytest.raises(TypeError, match="Unseeded is randomised but has no 'seed' parameter"):
        register_method("test-unseeded")(Unseeded)

    class Odd(Method):
        kind = "other"

    with pytest.raises(TypeError, match="Odd.kind must be 'prompt' or 'fitted'"):
        register_method("test-odd")(Odd)
    for name in ("test-undeclared", "test-unseeded", "test-odd"):
        with pytest.raises(ZsclipError, match="unknown method"):
            method_class(name)


def test_describe_method_is_what_methods_show_prints():
    info = describe_method("waffle")
    assert info["name"] == "waffle" and info["kind"] == "prompt" and info["randomised"] is True
    assert info["default_seeds"] == method_class("waffle").default_seeds
    assert info["summary"] and "\n" not in info["summary"] and "\n" not in info["module_doc"]
    dds = describe_method(method_class("dds"))
    assert dds["default_seeds"] is None and dds["randomised"] is False and dds["kind"] == "fitted"
    k = next(p for p in dds["parameters"] if p["name"] == "k")
    assert k == {"name": "k", "default": 3, "constraint": "an int ≥ 1",
                 "doc": method_class("dds").parameters["k"].doc}
    assert [p["name"] for p in dds["parameters"]] == method_class("dds").param_names()
    # the first paragraph of the method's module docstring, on one line
    assert dds["module_doc"].startswith("Discriminative description selection, DDS (Ma, Rietdorf")
    assert dds["module_doc"].endswith("METHODS.md §3).") and "Training-free" not in dds["module_doc"]


def test_a_well_formed_method_of_either_kind_is_registered(monkeypatch):
    import zsclip.methods.base as base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # registered for this test only

    class Prompt(Method):
        parameters = {"a": Param(int, "d")}

        def __init__(self, a: int = 1) -> None:
            self.a = a

    class Fitted(Method):
        kind = "fitted"

    assert register_method("test-prompt")(Prompt) is Prompt and Prompt.name == "test-prompt"
    assert register_method("test-fitted")(Fitted) is Fitted
    assert method_class("test-prompt") is Prompt and make_method("test-prompt", a=4).a == 4


def test_parameters_become_json_values():
    assert jsonable_params({"path": Path("/a/b"), "grid": (0.5, 1), "src": {"c": ("x", Path("y"))}, "n": 3}) == {
        "path": "/a/b", "grid": [0.5, 1], "src": {"c": ["x", "y"]}, "n": 3}


def test_dataset_of_accepts_a_context_or_a_dataset(tmp_path):
    from fixtures_data import make_cub_folder

    from zsclip.datasets import get_dataset

    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=2, images_per_class=2))

    class Ctx:
        dataset = ds

    assert dataset_of(ds) is ds and dataset_of(Ctx()) is ds
