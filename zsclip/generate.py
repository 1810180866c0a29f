"""Generating descriptor and synonym files with an LLM: CbD, CuPL and contrastive descriptors, REAL synonyms.

Each job fills a meta-prompt (a text file in ``prompts/meta/``) for every class, asks the LLM through
``LLMClient.complete_many`` (cached, retried, budgeted) and parses the replies (METHODS.md §1, §2, §6). A
class whose replies never parse is reported in ``GenerationResult.failed``; the others go on. The files
written are the formats the rest of zsclip reads (CbD JSON ``{classname: [...]}``, REAL
``{"0": {"name", "alternates", "most_common_name"}}``), each with a ``.provenance.json`` sidecar saying
which model, server, meta-prompt and parameters made it and what it cost.

    >>> llm = LLMClient("gpt-4o-mini", max_calls=500)
    >>> result = generate_descriptors(dataset.classnames, llm, style="cbd", domain="bird")
    >>> write_descriptor_file("descriptors.json", result.per_class, result.provenance)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ._io import write_json_atomic
from ._version import __version__
from .errors import ZsclipError
from .llm import LLMClient
from .paths import resource_dir
from .prompts import normalise_descriptor
from .records import Record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptStyle:
    """How one kind of descriptor is asked for: its meta-prompt file and default sampling.

    ``multi_prompt``: the file holds one prompt per line (CuPL) rather than one multi-line prompt.
    """

    name: str
    meta_file: str
    temperature: float
    samples: int
    multi_prompt: bool = False


#: the descriptor styles; CuPL samples at a high temperature, as its authors did, the others are greedy
STYLES: dict[str, PromptStyle] = {
    "cbd": PromptStyle("cbd", "cbd.txt", temperature=0.0, samples=1),
    "cupl": PromptStyle("cupl", "cupl.txt", temperature=0.99, samples=3, multi_prompt=True),
    "contrastive": PromptStyle("contrastive", "contrastive.txt", temperature=0.0, samples=1),
}
SYNONYMS = PromptStyle("synonyms", "synonyms.txt", temperature=0.0, samples=1)
#: the text REAL's synonym filter classifies
FILTER_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class GenerationResult:
    """What one generation job produced.

    ``per_class`` holds every class in the order given (label order): a failed class has no descriptors
    (``[]``, which the classifiers fill with the class-name prompt) or, for synonyms, only its own name.
    ``failed`` maps each failed class to the reason; ``provenance`` is what the sidecar file records.
    """

    kind: str
    per_class: dict[str, list[str]]
    failed: dict[str, str]
    provenance: dict[str, Any]

    @property
    def succeeded(self) -> list[str]:
        """The classes that got an answer, in order."""
        return [c for c in self.per_class if c not in self.failed]


# -- meta-prompts --------------------------------------------------------------------------------------------

def meta_prompt_path(name: str) -> Path:
    """The shipped meta-prompt file ``prompts/meta/<name>`` (e.g. ``cbd.txt``)."""
    return resource_dir("prompts") / "meta" / name


def read_meta_prompt(path: str | Path, required: Sequence[str] = ("classname",)) -> str:
    """The text of a meta-prompt file, checked to contain each ``{placeholder}`` in ``required``."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZsclipError(f"meta-prompt file not found: {path}") from None
    missing = [f"{{{name}}}" for name in required if f"{{{name}}}" not in text]
    if missing:
        raise ZsclipError(f"meta-prompt {path} lacks {', '.join(missing)}: the class-specific parts of a "
                          "meta-prompt are written {classname}, {domain} and {others}")
    return text


def fill(meta_prompt: str, **values: str) -> str:
    """Replace ``{name}`` by ``values[name]``; other braces (e.g. the ``{}`` of a template) stay as they are."""
    for name, value in values.items():
        meta_prompt = meta_prompt.replace(f"{{{name}}}", value)
    return meta_prompt


def _join_names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# -- parsing -------------------------------------------------------------------------------------------------

def parse_bullets(text: str) -> list[str]:
    """CbD parsing: the lines starting with "- ", normalised (``normalise_descriptor``) and deduplicated.

    A reply without any such line (a refusal, a paragraph) raises ``ValueError`` so that it is asked again.
    """
    items: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("- "):
            item = normalise_descriptor(line)
            if item and item not in items:
                items.append(item)
    if not items:
        raise ValueError("no '- ' descriptor lines in the reply")
    return items


_REFUSAL = re.compile(r"^(i don't know|i do not know|i'm not sure|i am not sure|i'm sorry|i am sorry|sorry|"
                      r"i cannot|i can't|as an ai)\b", re.IGNORECASE)


def parse_sentence(text: str) -> list[str]:
    """CuPL parsing: the whole reply as one description, whitespace collapsed; empty replies and refusals
    ("I don't know ...", "I'm sorry ...") raise ``ValueError``."""
    sentence = " ".join(text.replace("’", "'").split())
    if not sentence:
        raise ValueError("empty reply")
    if _REFUSAL.match(sentence):
        raise ValueError(f"the reply is a refusal: {sentence[:80]!r}")
    return [sentence]


_LIST_MARK = re.compile(r"^\s*(?:\(?\d+[.):\]]|[-*•])\s*")
_BRACKETED = re.compile(r"\([^)]*\)|\[[^\]]*\]|\{[^}]*\}")
_QUOTES = re.compile(r"[\"'“”‘’`]")


def clean_synonym(text: str) -> str:
    """One synonym as REAL cleans it: no list mark, no bracketed text, no quotes, lower case, '-'/'_' read
    as spaces, whitespace collapsed, no trailing punctuation."""
    s = _LIST_MARK.sub("", text, count=1)
    s = _QUOTES.sub("", _BRACKETED.sub(" ", s)).lower().replace("-", " ").replace("_", " ")
    return " ".join(s.split()).strip(" .,;:!?")


def parse_synonym_list(text: str) -> list[str]:
    """The synonyms in a numbered (or bulleted) list reply, cleaned (``clean_synonym``) and deduplicated.

    Lines that are not list items (a preamble such as "Here are some ways:") are ignored; a reply with no
    list item at all raises ``ValueError`` so that it is asked again.
    """
    items = [line for line in text.splitlines() if _LIST_MARK.match(line) and line.strip()]
    if not items:
        raise ValueError("no numbered list in the reply")
    out: list[str] = []
    for line in items:
        synonym = clean_synonym(line)
        if synonym and synonym not in out:
            out.append(synonym)
    return out


def merge_synonyms(classname: str, synonyms: Sequence[str]) -> list[str]:
    """``classname`` first (as given), then the synonyms that are not the name itself once cleaned."""
    own = clean_synonym(classname)
    out = [classname]
    for synonym in synonyms:
        if synonym != own and synonym not in out:
            out.append(synonym)
    return out


# -- jobs ----------------------------------------------------------------------------------------------------

def public_url(url: str) -> str:
    """A server address fit for a provenance record: no user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_COUNTERS = ("calls", "cached", "prompt_tokens", "completion_tokens", "cost_usd", "retries", "reasks", "failures")


def _accounting_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """What one job added to a client's accounting (a client may serve several jobs)."""
    delta: dict[str, Any] = {k: after[k] - before[k] for k in _COUNTERS}
    delta["unpriced_models"] = after["unpriced_models"]
    return delta


def _ask_all(llm: LLMClient, prompts: Sequence[str], parse: Callable[[str], list[str]], samples: int,
             temperature: float, seed: int) -> list[list[tuple[list[str] | None, str | None]]]:
    """Ask every prompt ``samples`` times (sample ``s`` is sent with ``seed + s``, so each sample is its own
    request and its own cache entry); ``out[p][s]`` is ``(value, error)``."""
    out: list[list[tuple[list[str] | None, str | None]]] = [[] for _ in prompts]
    for s in range(samples):
        results = llm.complete_many(prompts, parse=parse, temperature=temperature, seed=seed + s)
        for p, result in enumerate(results):
            out[p].append((result.value, result.error))
    return out


def _provenance(kind: str, llm: LLMClient, meta_path: Path, meta_text: str, *, domain: str, temperature: float,
                seed: int, samples: int, classnames: Sequence[str], per_class: Mapping[str, list[str]],
                failed: Mapping[str, str], requests: int, failed_requests: int,
                accounting: dict[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "model": llm.model,
        "base_url": public_url(llm.server),
        "meta_prompt": {"file": meta_path.name, "sha256": hashlib.sha256(meta_text.encode("utf-8")).hexdigest()},
        "domain": domain,
        "temperature": temperature,
        "seed": seed,
        "samples": samples,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "zsclip_version": __version__,
        "counts": {"classes": len(classnames), "succeeded": len(classnames) - len(failed), "failed": len(failed),
                   "items": sum(len(v) for v in per_class.values()), "requests": requests,
                   "failed_requests": failed_requests},
        "failed_classes": dict(failed),
        "accounting": accounting,
        **(extra or {}),
    }


def generate_descriptors(classnames: Sequence[str], llm: LLMClient, style: str = "cbd", *, domain: str = "object",
                         confusions: Mapping[str, Sequence[str]] | None = None, samples: int | None = None,
                         temperature: float | None = None, seed: int = 0,
                         prompt_file: str | Path | None = None) -> GenerationResult:
    """Ask ``llm`` for descriptors of every class in the prompt ``style``.

    ``cbd``: the two-example few-shot question of CbD, replies parsed as "- " lines. ``cupl``: every line
    of the CuPL meta-prompt is asked ``samples`` times; each reply is one description sentence.
    ``contrastive``: like ``cbd``, but the question names the classes ``confusions[classname]`` (e.g. the
    most-confused ones, ``confusions_from_scores``) that the descriptors must tell it apart from.
    ``domain`` fills ``{domain}`` (the dataset card's first domain word, e.g. "bird"). ``samples`` and
    ``temperature`` default to the style's (``STYLES``); repeated samples of CbD-style prompts are merged.
    ``prompt_file`` replaces the shipped meta-prompt. A class is failed when none of its requests gave a
    parseable reply.
    """
    if style not in STYLES:
        raise ZsclipError(f"unknown prompt style {style!r}; styles: {', '.join(STYLES)}")
    spec = STYLES[style]
    samples = spec.samples if samples is None else samples
    temperature = spec.temperature if temperature is None else temperature
    if samples < 1:
        raise ZsclipError(f"samples must be at least 1, got {samples}")
    meta_path = Path(prompt_file).expanduser() if prompt_file else meta_prompt_path(spec.meta_file)
    required = ("classname", "others") if style == "contrastive" else ("classname",)
    meta_text = read_meta_prompt(meta_path, required)
    if spec.multi_prompt:
        templates = [line.strip() for line in meta_text.splitlines() if line.strip()]
    else:
        templates = [meta_text.strip() + "\n"]

    extra: dict[str, Any] = {}
    values: list[dict[str, str]] = [{"classname": c, "domain": domain} for c in classnames]
    if style == "contrastive":
        confusions = confusions or {}
        missing = [c for c in classnames if not confusions.get(c)]
        if missing:
            raise ZsclipError(f"contrastive descriptors need the classes each class is confused with; none given "
                              f"for {len(missing)} classes, e.g. {missing[:3]}")
        for v in values:
            v["others"] = _join_names(list(confusions[v["classname"]]))
        extra["confusions"] = {c: list(confusions[c]) for c in classnames}

    prompts = [fill(t, **v) for v in values for t in templates]
    parse = parse_sentence if style == "cupl" else parse_bullets
    before = llm.accounting.as_dict()
    answers = _ask_all(llm, prompts, parse, samples, temperature, seed)

    per_class: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    failed_requests = 0
    for i, classname in enumerate(classnames):
        items: list[str] = []
        errors: list[str] = []
        for per_prompt in answers[i * len(templates):(i + 1) * len(templates)]:
            for value, error in per_prompt:
                if error is not None:
                    errors.append(error)
                items += [d for d in value or [] if d not in items]
        failed_requests += len(errors)
        per_class[classname] = items
        if not items:
            failed[classname] = errors[-1] if errors else "no descriptors in the replies"
    if failed:
        logger.warning("%d of %d classes got no descriptors: %s", len(failed), len(classnames),
                       ", ".join(list(failed)[:10]))
    provenance = _provenance(style, llm, meta_path, meta_text, domain=domain, temperature=temperature, seed=seed,
                             samples=samples, classnames=classnames, per_class=per_class, failed=failed,
                             requests=len(prompts) * samples, failed_requests=failed_requests,
                             accounting=_accounting_delta(before, llm.accounting.as_dict()), extra=extra)
    return GenerationResult(style, per_class, failed, provenance)


def generate_synonyms(classnames: Sequence[str], llm: LLMClient, *, domain: str = "object",
                      temperature: float = 0.0, seed: int = 0,
                      prompt_file: str | Path | None = None) -> GenerationResult:
    """Ask ``llm`` REAL's question "What are some common ways of referring to a {domain}, i.e. {classname}?"
    for every class and clean the numbered lists (``parse_synonym_list``).

    Each class's list starts with its own name (``merge_synonyms``); a failed class keeps only its name.
    """
    meta_path = Path(prompt_file).expanduser() if prompt_file else meta_prompt_path(SYNONYMS.meta_file)
    meta_text = read_meta_prompt(meta_path)
    prompts = [fill(meta_text.strip(), classname=c, domain=domain) for c in classnames]
    before = llm.accounting.as_dict()
    answers = _ask_all(llm, prompts, parse_synonym_list, 1, temperature, seed)
    per_class: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for classname, ((value, error),) in zip(classnames, answers):
        per_class[classname] = merge_synonyms(classname, value or [])
        if error is not None:
            failed[classname] = error
    if failed:
        logger.warning("%d of %d classes got no synonym list: %s", len(failed), len(classnames),
                       ", ".join(list(failed)[:10]))
    provenance = _provenance("synonyms", llm, meta_path, meta_text, domain=domain, temperature=temperature,
                             seed=seed, samples=1, classnames=classnames, per_class=per_class, failed=failed,
                             requests=len(prompts), failed_requests=len(failed),
                             accounting=_accounting_delta(before, llm.accounting.as_dict()))
    return GenerationResult("synonyms", per_class, failed, provenance)


def filter_synonyms(synonyms_per_class: Mapping[str, Sequence[str]],
                    classifier_fn: Callable[[list[str]], Sequence[int] | np.ndarray],
                    template: str = FILTER_TEMPLATE) -> dict[str, list[str]]:
    """REAL's self-consistency filter: keep a synonym only if ``template.format(synonym)`` is classified as
    its own class.

    ``synonyms_per_class`` is in label order (class ``i`` is the ``i``-th key); ``classifier_fn(texts)``
    returns one predicted class index per text (e.g. a CLIP zero-shot classifier applied to the texts'
    embeddings). The first entry of each list, the class's own name, is always kept.
    """
    queries = [(c, i, s) for i, (c, syns) in enumerate(synonyms_per_class.items()) for s in list(syns)[1:]]
    predicted = np.asarray(classifier_fn([template.format(s) for _, _, s in queries])) if queries else np.zeros(0)
    if len(predicted) != len(queries):
        raise ZsclipError(f"the synonym classifier returned {len(predicted)} predictions for {len(queries)} texts")
    out = {c: list(syns)[:1] for c, syns in synonyms_per_class.items()}
    for (c, i, s), p in zip(queries, predicted):
        if int(p) == i:
            out[c].append(s)
    dropped = len(queries) - sum(len(v) - 1 for v in out.values())
    logger.info("synonym filter kept %d of %d synonyms", len(queries) - dropped, len(queries))
    return out


def confusions_from_scores(scores: np.ndarray, labels: np.ndarray, classnames: Sequence[str],
                           k: int = 3) -> dict[str, list[str]]:
    """The ``k`` classes each class is most confused with: for the images of class ``c``, the other classes
    with the highest mean score (``scores`` is images × classes, ``labels`` the true class of each image)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n_classes = len(classnames)
    if scores.ndim != 2 or scores.shape != (len(labels), n_classes):
        raise ZsclipError(f"scores must be images x classes = {len(labels)} x {n_classes}, got {scores.shape}")
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        empty = [classnames[c] for c in np.flatnonzero(counts == 0)[:5]]
        raise ZsclipError(f"{int((counts == 0).sum())} classes have no images to measure confusion on, e.g. {empty}")
    sums = np.zeros((n_classes, n_classes))
    np.add.at(sums, labels, scores)
    mean = sums / counts[:, None]
    np.fill_diagonal(mean, -np.inf)
    k = min(k, n_classes - 1)
    order = np.argsort(-mean, axis=1, kind="stable")[:, :k]
    return {classnames[c]: [classnames[j] for j in order[c]] for c in range(n_classes)}


# -- files ---------------------------------------------------------------------------------------------------

def provenance_record(provenance: Mapping[str, Any], dataset: str | None = None) -> Record:
    """A generation's provenance as a ``Record`` (kind ``generation``), the one record type of zsclip: the
    LLM and server as the model, the style and its sampling settings as the method parameters, the counts,
    and everything else (failures, accounting, confusions, the CLIP filter) as results."""
    p = dict(provenance)
    params = {k: p.pop(k) for k in ("meta_prompt", "domain", "temperature", "seed", "samples") if k in p}
    return Record(kind="generation", dataset={"name": dataset or p.pop("dataset", None)},
                  model={"name": p.pop("model", None), "server": p.pop("base_url", None)},
                  method={"name": p.pop("kind", None), "params": params}, counts=p.pop("counts", {}),
                  created=p.pop("created", None) or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  zsclip_version=p.pop("zsclip_version", __version__), results=p)


def provenance_path(path: str | Path) -> Path:
    """The provenance sidecar of a generated file: ``x.json`` → ``x.provenance.json``."""
    return Path(path).with_suffix(".provenance.json")


def _check_per_class(per_class: Mapping[str, Sequence[str]]) -> None:
    for classname, items in per_class.items():
        if not isinstance(classname, str) or isinstance(items, str) or not all(isinstance(x, str) for x in items):
            raise ZsclipError(f"class {classname!r}: expected a list of strings, got {items!r}")


def write_descriptor_file(path: str | Path, per_class: Mapping[str, Sequence[str]],
                          provenance: Mapping[str, Any]) -> Path:
    """Write ``{classname: [descriptor, ...]}`` (CbD / CuPL JSON, in the given class order) and its
    ``.provenance.json`` sidecar, each atomically; returns the path of the descriptor file."""
    _check_per_class(per_class)
    path = Path(path).expanduser()
    write_json_atomic(path, {c: list(items) for c, items in per_class.items()})
    provenance_record(provenance).write(provenance_path(path))
    logger.info("wrote descriptors of %d classes to %s", len(per_class), path)
    return path


def write_synonym_file(path: str | Path, per_class: Mapping[str, Sequence[str]],
                       provenance: Mapping[str, Any]) -> Path:
    """Write synonyms in REAL's format and the ``.provenance.json`` sidecar, each atomically.

    ``{"0": {"name": classname, "alternates": {synonym: null, ...}, "most_common_name": classname}, ...}``
    in the given class order: counts are ``null`` and the most common name is the class's own until the
    synonyms are counted in a caption corpus. The class's own name is listed among its alternates.
    """
    _check_per_class(per_class)
    path = Path(path).expanduser()
    data = {str(i): {"name": c, "alternates": {s: None for s in merge_synonyms(c, items)}, "most_common_name": c}
            for i, (c, items) in enumerate(per_class.items())}
    write_json_atomic(path, data)
    provenance_record(provenance).write(provenance_path(path))
    logger.info("wrote synonyms of %d classes to %s", len(per_class), path)
    return path
