"""Property-based tests (hypothesis) for the parsers and rules that users feed arbitrary text: template
formatting and template files, descriptor files in both formats, matching file entries to class names, and
CbD's phrasing rule — each against an independent restatement of what it must do."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsclip.errors import DescriptorFileError, ZsclipError
from zsclip.prompts import (
    descriptor_phrase,
    format_template,
    load_templates,
    match_descriptors,
    read_descriptor_file,
)

settings.register_profile("zsclip", max_examples=150, deadline=None)
settings.load_profile("zsclip")

#: printable text on one line (no control characters, no line or paragraph separators)
line_text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30)
any_text = st.text(max_size=30)


def name_key(name: str) -> str:
    """How class names are compared (restated): case, '_' and '-' ignored, runs of whitespace as one space."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


# -- templates -------------------------------------------------------------------------------------------

@given(prefix=any_text, suffix=any_text, name=any_text)
def test_a_template_with_one_open_slot_puts_the_name_there(prefix, suffix, name):
    template = prefix + "{}" + suffix
    if "{c}" in template or template.count("{}") != 1:  # another slot in the prefix or suffix: other tests
        return
    assert format_template(template, name) == prefix + name + suffix  # braces in the name are kept as written


@given(parts=st.lists(any_text, min_size=2, max_size=4), name=any_text)
def test_every_c_slot_gets_the_name(parts, name):
    template = "{c}".join(parts)
    if template.count("{c}") != len(parts) - 1:  # a part that completes another "{c}" at a seam
        return
    assert format_template(template, name) == name.join(parts)


@given(text=any_text, name=any_text)
def test_a_template_without_exactly_one_slot_is_refused(text, name):
    if "{c}" in text or text.count("{}") == 1:
        return
    with pytest.raises(ZsclipError, match="exactly one"):
        format_template(text, name)


template_line = st.builds(lambda a, b: (a + "{}" + b).strip(), line_text, line_text).filter(
    lambda t: t.count("{}") == 1 and "{c}" not in t and not t.startswith("#"))
comment_or_blank = st.one_of(st.just(""), st.just("   "), line_text.map(lambda t: "# " + t))


@given(templates=st.lists(template_line, min_size=1, max_size=6),
       noise=st.lists(st.tuples(st.integers(0, 6), comment_or_blank), max_size=4))
def test_a_template_file_gives_its_templates_in_order(templates, noise):
    lines = list(templates)
    for at, extra in noise:
        lines.insert(min(at, len(lines)), extra)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "templates.txt"
        path.write_text("\n".join("  " + ln + " " if ln else ln for ln in lines) + "\n", encoding="utf-8")
        assert load_templates(str(path)) == templates


@given(template=template_line)
def test_a_literal_template_is_itself(template):
    assert load_templates(template) == [template]


# -- descriptor files ------------------------------------------------------------------------------------

descriptor_lists = st.lists(any_text, max_size=4)
#: class names (a CbD file whose only class is called "index_to_classname" reads as a DDS file: not generated)
classnames = st.lists(line_text.filter(lambda n: name_key(n) != "" and n != "index_to_classname"), min_size=1,
                      max_size=5, unique_by=name_key)


def _write(data: object, ensure_ascii: bool) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / "descriptors.json"
    path.write_text(json.dumps(data, ensure_ascii=ensure_ascii), encoding="utf-8")
    return path


@given(names=classnames, data=st.data(), ensure_ascii=st.booleans())
def test_a_cbd_file_reads_back_as_written(names, data, ensure_ascii):
    content = {n: data.draw(descriptor_lists) for n in names}
    assert read_descriptor_file(_write(content, ensure_ascii)) == content
    assert list(read_descriptor_file(_write(content, ensure_ascii))) == names  # file order kept


@given(names=classnames, data=st.data())
def test_a_dds_file_reads_back_in_class_index_order(names, data):
    indices = data.draw(st.lists(st.integers(0, 10_000), min_size=len(names), max_size=len(names), unique=True))
    lists = [data.draw(descriptor_lists) for _ in names]
    order = data.draw(st.permutations(range(len(names))))
    content = {"index_to_classname": {str(indices[i]): names[i] for i in order},
               "index_to_descriptions": {str(indices[i]): lists[i] for i in reversed(order)}}
    got = read_descriptor_file(_write(content, True))
    by_index = sorted(range(len(names)), key=lambda i: indices[i])
    assert list(got.items()) == [(names[i], lists[i]) for i in by_index]


@given(name=line_text.filter(lambda n: any(c.isalpha() for c in n.lower() if c.lower() != c.upper())),
       data=st.data())
def test_two_entries_for_one_class_are_refused(name, data):
    variant = name.swapcase() if name.swapcase() != name else name + "_"
    if name_key(variant) != name_key(name) or variant == name:
        return
    with pytest.raises(DescriptorFileError, match="differ only in case"):
        read_descriptor_file(_write({name: ["a"], variant: ["b"]}, True))


def _variant(name: str, draw) -> str:
    """``name`` written another way that names the same class: case changed, spaces as '_' or '-'."""
    words = name_key(name).split(" ")
    out = []
    for w in words:  # only case changes that lower() undoes ("ß".upper() is "SS": not the same name)
        out.append(draw(st.sampled_from([v for v in (w, w.upper(), w.title()) if v.lower() == w])))
    joined = out[0]
    for w in out[1:]:
        joined += draw(st.sampled_from([" ", "_", "-", "  "])) + w
    return joined


@given(names=classnames, data=st.data())
def test_entries_match_their_classes_however_the_names_are_written(names, data):
    lists = {n: data.draw(descriptor_lists) for n in names}
    written = {_variant(n, data.draw): lists[n] for n in data.draw(st.permutations(names))}
    assert match_descriptors(written, names) == [lists[n] for n in names]


@given(names=classnames.filter(lambda ns: len(ns) >= 2), data=st.data())
def test_a_class_missing_from_the_file_is_named(names, data):
    missing = data.draw(st.sampled_from(names))
    written = {n: ["x"] for n in names if n != missing}
    with pytest.raises(DescriptorFileError) as info:
        match_descriptors(written, names)
    assert f"class {missing!r} has no entry" in str(info.value)


# -- CbD's phrasing rule -----------------------------------------------------------------------------------

def authors_rule(d: str) -> str:
    """The rule as the CbD authors' code states it: raw, case-sensitive string prefixes, in their order."""
    if d.startswith("a") or d.startswith("an"):
        return f"which is {d}"
    if d.startswith("has") or d.startswith("often") or d.startswith("typically") or d.startswith("may") \
            or d.startswith("can"):
        return f"which {d}"
    if d.startswith("used"):
        return f"which is {d}"
    return f"which has {d}"


def first_word_rule(d: str) -> str:
    """The rule as METHODS.md §1 states it: the descriptor's first word, case-insensitive, decides."""
    d = d.strip()
    match = re.match(r"\S+", d)
    first = match.group(0).lower() if match else ""
    if first in ("a", "an", "used"):
        return f"which is {d}"
    if first in ("has", "often", "typically", "may", "can"):
        return f"which {d}"
    return f"which has {d}"


leading_words = st.sampled_from(["a", "an", "A", "An", "used", "Used", "has", "Has", "often", "typically", "may",
                                 "can", "candied", "antennae", "hasty", "mayfly", "usedd", "the", ""])
descriptors = st.builds(lambda w, sep, rest: w + sep + rest, leading_words, st.sampled_from([" ", "  ", "\t", ""]),
                        any_text) | any_text


@given(d=descriptors)
def test_the_published_quirk_is_the_authors_code(d):
    assert descriptor_phrase(d, published_quirk=True) == authors_rule(d)


@given(d=descriptors)
def test_the_default_phrasing_follows_the_first_word(d):
    assert descriptor_phrase(d) == first_word_rule(d)
