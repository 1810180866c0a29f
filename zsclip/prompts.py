"""Prompt sets: the texts per class a classifier encodes, and how their scores are combined.

Also the prompt data formats: template sets (names, files, literals; ``{}`` or ``{c}`` placeholders),
descriptor files in the CbD / CuPL (``{classname: [text, ...]}``) and DDS
(``{"index_to_classname": ..., "index_to_descriptions": ...}``) formats, matched to a dataset's classes by
name, and the CbD phrasing of a descriptor ("which is/has ...", METHODS.md §1).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import read_json, read_text
from .errors import DescriptorFileError, ZsclipError
from .paths import resource_dir

#: how the scores of a class's texts become the class score
#: ``prototype``: cosine with the renormalised mean text embedding (template ensembles, CuPL);
#: ``mean`` / ``max`` / ``sum``: of the per-text cosines (CbD uses ``mean``).
AGGREGATIONS = ("prototype", "mean", "max", "sum")


@dataclass(frozen=True)
class PromptSet:
    """Texts per class, stored flat and grouped: class ``c`` owns ``texts[offsets[c]:offsets[c+1]]``.

    ``labels`` is what an explanation shows for each text (the descriptor alone, or the template);
    ``info`` holds facts about how the set was made (its source, fallbacks), for the run record's fit info.
    """

    classnames: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    owners: np.ndarray  # class index of each text, non-decreasing
    aggregation: str
    method: str
    info: Mapping[str, object]

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ZsclipError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        counts = np.bincount(self.owners, minlength=len(self.classnames))
        if len(counts) != len(self.classnames) or (counts == 0).any() or np.any(np.diff(self.owners) < 0):
            raise ZsclipError("a prompt set needs at least one text per class, grouped by class")

    @classmethod
    def from_lists(cls, classnames: Sequence[str], per_class: Sequence[Sequence[tuple[str, str]]],
                   aggregation: str, method: str, info: Mapping[str, object] | None = None) -> PromptSet:
        """Build from ``per_class[c] = [(text, label), ...]``."""
        texts = [t for group in per_class for t, _ in group]
        labels = [lab for group in per_class for _, lab in group]
        owners = np.repeat(np.arange(len(per_class)), [len(g) for g in per_class])
        return cls(tuple(classnames), tuple(texts), tuple(labels), owners, aggregation, method, dict(info or {}))

    @property
    def offsets(self) -> np.ndarray:
        """Start of each class's texts, plus the total at the end (length C + 1)."""
        return np.concatenate([[0], np.cumsum(np.bincount(self.owners, minlength=len(self.classnames)))])

    def texts_of(self, c: int) -> list[str]:
        o = self.offsets
        return list(self.texts[o[c] : o[c + 1]])


# -- templates ------------------------------------------------------------------------------------------

def format_template(template: str, classname: str) -> str:
    """Fill a template's single class-name slot, written ``{}`` (open_clip) or ``{c}`` (CLIP_benchmark)."""
    if "{c}" in template:
        return template.replace("{c}", classname)
    if template.count("{}") != 1:
        raise ZsclipError(f"template {template!r} needs exactly one '{{}}' or '{{c}}' for the class name")
    return template.replace("{}", classname)


def _openai_imagenet_templates() -> list[str]:
    import open_clip

    return [t("{}") if callable(t) else str(t) for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def load_templates(spec: str, card: Mapping[str, object] | None = None) -> list[str]:
    """Resolve a template spec to a list of templates.

    ``spec`` is ``simple`` ("a photo of a {}."), ``ensemble`` (the dataset card's ensemble, else CLIP's 80
    ImageNet templates), ``openai-imagenet``, the name of a file in ``prompts/templates/``, a path to a
    file with one template per line, or a literal template containing ``{}``/``{c}``.
    """
    card = card or {}
    if spec == "ensemble":
        templates = card.get("templates")
        return list(templates) if templates else _openai_imagenet_templates()  # type: ignore[arg-type]
    if spec == "openai-imagenet":
        return _openai_imagenet_templates()
    if "{}" in spec or "{c}" in spec:
        return [spec]
    named = resource_dir("prompts") / "templates" / f"{spec}.txt"
    path = named if named.is_file() else Path(spec).expanduser()
    if not path.is_file():
        raise ZsclipError(f"--templates {spec!r} is not a template (no '{{}}'), a known set "
                          f"(simple, ensemble, openai-imagenet) or a file")
    lines = [ln.strip() for ln in read_text(path, what="template file").splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    for i, t in enumerate(templates):
        try:
            format_template(t, "x")
        except ZsclipError as exc:
            raise ZsclipError(f"{path}: template {i + 1}: {exc}") from None
    if not templates:
        raise ZsclipError(f"template file {path} holds no template")
    return templates


# -- descriptors ----------------------------------------------------------------------------------------

_LEADING_PRONOUN = re.compile(r"^(it|they)\s+(is|are|has|have)\s+", re.IGNORECASE)


def normalise_descriptor(text: str) -> str:
    """Clean an LLM descriptor: strip list marks and whitespace, a leading "It is/It has", a final period."""
    d = text.strip().lstrip("-*•").strip()
    m = _LEADING_PRONOUN.match(d)
    if m:
        verb = m.group(2).lower()
        d = d[m.end():]
        if verb in ("has", "have"):
            d = "has " + d
    return d.rstrip(" .").strip()


def descriptor_phrase(descriptor: str, published_quirk: bool = False) -> str:
    """CbD's phrasing of a descriptor after "{class}, " (METHODS.md §1).

    "which is d" when d starts with the article a/an or with "used", "which d" when it starts with
    has/often/typically/may/can, else "which has d" (first word, case-insensitive).

    ``published_quirk`` reproduces the authors' code exactly: every test is a raw, case-sensitive string
    prefix of the descriptor as written (``d.startswith('a')``: "antennae" → "which is antennae";
    ``startswith('can')``: "candied fruit" → "which candied fruit"; "Has wings" → "which has Has wings").
    """
    if published_quirk:
        if descriptor.startswith("a") or descriptor.startswith("an") or descriptor.startswith("used"):
            return f"which is {descriptor}"
        if descriptor.startswith(("has", "often", "typically", "may", "can")):
            return f"which {descriptor}"
        return f"which has {descriptor}"
    d = descriptor.strip()
    first = d.split(None, 1)[0].lower() if d else ""  # any whitespace ends the word (a tab, a no-break space)
    if first in ("a", "an", "used"):
        return f"which is {d}"
    if first in ("has", "often", "typically", "may", "can"):
        return f"which {d}"
    return f"which has {d}"


def _name_key(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ").replace("-", " ")).strip().lower()


def read_descriptor_file(path: str | Path) -> dict[str, list[str]]:
    """Read descriptors in the CbD/CuPL or DDS format as ``{classname: [descriptor, ...]}`` (file order).

    Refused with a ``DescriptorFileError`` naming the file: invalid or non-UTF-8 JSON, a key given twice,
    a DDS index that is not an integer, and two class names that differ only in case, ``_`` or ``-``
    (they would match the same class).
    """
    path = Path(path).expanduser()
    try:
        data = read_json(path, what="descriptor file")
    except DescriptorFileError:
        raise
    except ZsclipError as exc:
        raise DescriptorFileError(str(exc)) from None
    if isinstance(data, dict) and "index_to_classname" in data:
        names = data["index_to_classname"]
        descs = data.get("index_to_descriptions")
        if not isinstance(names, dict) or not isinstance(descs, dict):
            raise DescriptorFileError(f"{path}: DDS format needs objects 'index_to_classname' and "
                                      "'index_to_descriptions'")
        bad = [k for k in names if not k.strip().lstrip("-").isdigit()]
        if bad:
            raise DescriptorFileError(f"{path}: index_to_classname key {bad[0]!r} is not an integer class index")
        out: dict[str, list[str]] = {}
        for idx in sorted(names, key=lambda k: int(k)):
            if idx not in descs:
                raise DescriptorFileError(f"{path}: index_to_descriptions has no entry {idx!r} "
                                          f"(class {names[idx]!r})")
            out[str(names[idx])] = _string_list(descs[idx], path, f"index_to_descriptions[{idx!r}]")
        _check_name_collisions(out, str(path))
        return out
    if not isinstance(data, dict):
        raise DescriptorFileError(f"{path}: expected a JSON object {{classname: [descriptor, ...]}} "
                                  f"(CbD/CuPL) or a DDS file, got {type(data).__name__}")
    out = {str(k): _string_list(v, path, repr(k)) for k, v in data.items()}
    _check_name_collisions(out, str(path))
    return out


def _check_name_collisions(names: Sequence[str] | Mapping[str, object], source: str) -> None:
    """Refuse two names that differ only in case, '_' or '-' (name matching would merge them)."""
    seen: dict[str, str] = {}
    for name in names:
        key = _name_key(name)
        if key in seen and seen[key] != name:
            raise DescriptorFileError(
                f"{source}: entries {seen[key]!r} and {name!r} differ only in case, '_' or '-', so both would "
                "match the same class; merge them into one entry or rename one"
            )
        seen.setdefault(key, name)


def _string_list(value: object, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise DescriptorFileError(f"{path}: entry {where} must be a list of strings")
    return list(value)


def match_descriptors(descriptors: Mapping[str, list[str]], classnames: Sequence[str],
                      source: str = "descriptor file") -> list[list[str]]:
    """Align descriptors to ``classnames`` by name (case, '_' and '-' ignored).

    A class missing from the file or a file entry matching no class is an error that lists all of
    them with the closest names; a class listed with an empty list is allowed (it falls back). Two
    entries that match the same class are an error naming both.
    """
    _check_name_collisions(descriptors, source)
    by_key = {_name_key(k): v for k, v in descriptors.items()}
    class_keys = [_name_key(c) for c in classnames]
    missing = [c for c, k in zip(classnames, class_keys) if k not in by_key]
    unknown = [k for k in descriptors if _name_key(k) not in set(class_keys)]
    if missing or unknown:
        lines = []
        for c in missing[:20]:
            close = difflib.get_close_matches(_name_key(c), list(by_key), n=1)
            lines.append(f"  class {c!r} has no entry" + (f" (closest in file: {close[0]!r})" if close else ""))
        for k in unknown[:20]:
            lines.append(f"  entry {k!r} matches no class of the dataset")
        more = len(missing) + len(unknown) - len(lines)
        raise DescriptorFileError(
            f"{source} does not match the dataset's {len(classnames)} classes ({len(missing)} missing, "
            f"{len(unknown)} unknown):\n" + "\n".join(lines) + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nRename the entries to the dataset's class names (`zsclip datasets info` lists them)."
        )
    return [list(by_key[k]) for k in class_keys]
