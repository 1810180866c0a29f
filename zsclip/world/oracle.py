"""A scripted stand-in for an LLM in the toy world: answers describe, synonym and template prompts from the
world's ground truth, served over the chat-completions protocol on loopback.

This is not a model. It recognises which zsclip meta-prompt it was sent (CbD or contrastive descriptors,
CuPL sentences, REAL synonyms, new prompt templates), finds the toy-world species named in it and writes
the answer from the species' true attributes and names, spoiled on purpose at configurable rates: a
``generic_rate`` share of answers are true of every creature ("has eyes") and a ``wrong_rate`` share are
wrong (an attribute value the species does not have, a made-up synonym). Template requests (the prompt
searches') are answered by ``template_oracle.template_reply``: variations of the templates the request
calls good, avoiding what only the bad ones say, with an invalid template at ``wrong_rate``. REAL's
relevance questions ("Does the 'X' in '<caption>' refer to <species>? (Yes/No)") are answered from the
caption's true species, looked up by caption text in a corpus export's metadata (``caption_species``),
with the answer flipped at ``relevance_error_rate``.
Answers are deterministic per (class, kind, prompt, request seed), so the generation jobs, their cache and
their parsers can be tested end to end, and the methods that use generated descriptors can be checked
against a known truth (``judge_descriptor``).

    >>> server = serve(port=0, generic_rate=0.2, wrong_rate=0.1)   # a background thread
    >>> LLMClient("oracle", base_url=server.url).complete("...")
    >>> server.stop()

From the command line: ``zsclip world llm-serve --port 8000``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import signal
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ..chat_server import ChatServer, Refusal, Responder, message_text
from ..errors import ZsclipError
from .spec import (
    _ATTRIBUTE_VALUES,
    _GENERIC,
    _TRUE_PHRASES,
    ATTRIBUTES,
    DEFAULT_SEED,
    Species,
    World,
    _make_words,
    _unit,
    build_world,
)
from .template_oracle import template_reply

logger = logging.getLogger(__name__)

#: the reply to a prompt about a name that is not a toy-world species (no parser accepts it)
UNKNOWN_REPLY = "I don't know that creature."
#: what the oracle calls the species' domain in its sentences
DOMAIN = "creature"
#: the model name ``/v1/models`` lists (any name is answered)
MODEL_NAME = "oracle"
#: default rates of generic and wrong answer items: roughly what a small real LLM gets wrong about rare species
DEFAULT_GENERIC_RATE = 0.15
DEFAULT_WRONG_RATE = 0.1
_GENERIC_NAMES = ("creature", "critter", "animal", "little beast")
#: default chance that a relevance answer is wrong
DEFAULT_RELEVANCE_ERROR_RATE = 0.05
#: REAL's relevance question (``zsclip.relevance.QUESTION``); the caption is everything between the quotes
_RELEVANCE = re.compile(r"^Does the '(?P<name>.+?)' in '(?P<caption>.*)' refer to (?P<concept>.+)\? \(Yes/No\)$",
                        re.DOTALL)
#: attributes a wrong descriptor may get wrong (shape and distinctive part define the genus: an LLM that
#: knows the genus gets them right)
_WRONG_KEYS = tuple(k for k in ATTRIBUTES if k not in ("shape", "part"))


def _clause(phrase: str) -> str:
    """A descriptor as a verb phrase after the subject: "often found on sand" → "is often found on sand"."""
    first = phrase.split(" ", 1)[0]
    if first in ("often", "typically"):
        return "is " + phrase
    if first in ("lives", "flies", "has", "is", "can", "may"):
        return phrase
    return "has " + phrase


def _normal(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


@dataclass(frozen=True)
class Item:
    """One spoiled-or-true statement about a species: its text and kind (``true``, ``generic``, ``wrong``)."""

    text: str
    kind: str


class Oracle:
    """Answers zsclip's meta-prompts about the species of ``world`` (see the module docstring).

    ``generic_rate`` and ``wrong_rate`` are the chances that one answer item (a descriptor, a sentence's
    statement, a template, an extra synonym) is generic or wrong instead of true; they must sum to at most 1.
    ``caption_species`` maps a caption's text to its species index (``caption_species_from_corpus``), for
    relevance questions; a relevance answer is wrong (flipped) with probability ``relevance_error_rate``.
    """

    def __init__(self, world: World, generic_rate: float = DEFAULT_GENERIC_RATE,
                 wrong_rate: float = DEFAULT_WRONG_RATE, caption_species: Mapping[str, int] | None = None,
                 relevance_error_rate: float = DEFAULT_RELEVANCE_ERROR_RATE) -> None:
        if not (0 <= generic_rate <= 1 and 0 <= wrong_rate <= 1 and generic_rate + wrong_rate <= 1):
            raise ValueError(f"generic_rate and wrong_rate must be in [0, 1] and sum to at most 1, "
                             f"got {generic_rate} and {wrong_rate}")
        if not 0 <= relevance_error_rate <= 1:
            raise ValueError(f"relevance_error_rate must be in [0, 1], got {relevance_error_rate}")
        self.caption_species = dict(caption_species or {})
        self.relevance_error_rate = relevance_error_rate
        self.world = world
        self.generic_rate = generic_rate
        self.wrong_rate = wrong_rate
        names = sorted(world.classnames, key=len, reverse=True)  # "ab cd" must win over a shorter overlap
        self._name_pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)
        self._by_name = {s.name: s for s in world.species}
        self._taken = {w for s in world.species for w in (s.epithet, s.genus_word, *s.synonyms)}

    # -- recognising the prompt ------------------------------------------------------------------------

    @staticmethod
    def prompt_kind(prompt: str) -> str:
        """Which meta-prompt ``prompt`` is: ``relevance``, ``templates``, ``synonyms``, ``contrastive``, ``cbd``
        or ``cupl``."""
        if _RELEVANCE.match(prompt.strip()):
            return "relevance"
        text = prompt.lower()
        if "{}" in prompt and "template" in text:
            return "templates"
        if "ways of referring to" in text or "numbered list" in text:
            return "synonyms"
        if "apart from" in text:
            return "contrastive"
        if "features for distinguishing" in text or "- " in prompt:
            return "cbd"
        return "cupl"

    def species_in(self, prompt: str) -> Species | None:
        """The species whose official name occurs first in ``prompt`` (the asked-about one: a contrastive
        prompt names the confused classes after it), or ``None``."""
        match = self._name_pattern.search(prompt)
        return self._by_name[match.group(1).lower()] if match else None

    # -- answering -------------------------------------------------------------------------------------

    def answer(self, prompt: str, seed: int = 0) -> str:
        """The reply to ``prompt``; ``seed`` (the request's sampling seed) varies repeated samples."""
        kind = self.prompt_kind(prompt)
        digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).hexdigest()
        if kind == "relevance":
            return self._relevance(prompt, _unit("oracle", self.world.seed, kind, seed, digest))
        if kind == "templates":
            return template_reply(prompt, _unit("oracle", self.world.seed, kind, seed, digest),
                                  invalid_rate=self.wrong_rate)
        species = self.species_in(prompt)
        if species is None:
            return UNKNOWN_REPLY
        rng = _unit("oracle", self.world.seed, kind, species.index, seed, digest)
        if kind == "synonyms":
            return self._synonyms(species, rng)
        if kind == "cupl":
            return self._sentence(species, rng)
        others = [s for s in self.world.species if s is not species and re.search(
            rf"\b{re.escape(s.name)}\b", prompt, re.IGNORECASE)] if kind == "contrastive" else []
        return "\n".join(f"- {item.text}" for item in self.descriptor_items(species, rng, others))

    def _relevance(self, prompt: str, rng: random.Random) -> str:
        """"Yes." when the quoted caption's creature is the asked-about species, else "No." (flipped at
        ``relevance_error_rate``); ``UNKNOWN_REPLY`` for a caption or species the oracle does not know."""
        match = _RELEVANCE.match(prompt.strip())
        assert match is not None  # prompt_kind said so
        species = self.species_in(match.group("concept"))
        truth = self.caption_species.get(match.group("caption"))
        if species is None or truth is None:
            return UNKNOWN_REPLY
        right = truth == species.index
        return "Yes." if right != (rng.random() < self.relevance_error_rate) else "No."

    def _kind(self, rng: random.Random) -> str:
        r = rng.random()
        return "generic" if r < self.generic_rate else "wrong" if r < self.generic_rate + self.wrong_rate else "true"

    def descriptor_items(self, species: Species, rng: random.Random, others: list[Species] | None = None) -> list[Item]:
        """5-7 descriptors, each true, generic or wrong at the oracle's rates, none repeated.

        True descriptors name attributes in random order; when ``others`` (the classes to tell the species
        apart from) are given, the attributes that differ from theirs come first.
        """
        keys = list(ATTRIBUTES)
        rng.shuffle(keys)
        if others:
            keys.sort(key=lambda k: -sum(o.attributes[k] != species.attributes[k] for o in others))
        generic = list(_GENERIC)
        rng.shuffle(generic)
        wrong_keys = list(_WRONG_KEYS)
        rng.shuffle(wrong_keys)
        items: list[Item] = []
        for _ in range(rng.randint(5, 7)):
            kind = self._kind(rng)
            if kind == "generic" and generic:
                items.append(Item(generic.pop(), "generic"))
            elif kind == "wrong" and wrong_keys:
                key = wrong_keys.pop()
                value = rng.choice([v for v in _ATTRIBUTE_VALUES[key] if v != species.attributes[key]])
                items.append(Item(rng.choice(_TRUE_PHRASES[key][value]), "wrong"))
            elif keys:
                key = keys.pop(0)
                items.append(Item(rng.choice(_TRUE_PHRASES[key][species.attributes[key]]), "true"))
        return items

    def _sentence(self, species: Species, rng: random.Random) -> str:
        """A CuPL-style description: one sentence with two statements about the species."""
        first, second = self.descriptor_items(species, rng)[:2]
        opener = rng.choice((f"The {species.name} is a {DOMAIN} that", f"A {species.name}",
                             f"In photos, the {species.name}"))
        return f"{opener} {_clause(first.text)} and {_clause(second.text)}."

    def _synonyms(self, species: Species, rng: random.Random) -> str:
        """A numbered list: the official name and the species' synonyms, each possibly followed by a generic
        name (at ``generic_rate``) or a made-up wrong one (at ``wrong_rate``)."""
        entries: list[str] = []
        for name in (species.name, *species.synonyms):
            entries.append(name)
            kind = self._kind(rng)
            if kind == "generic":
                entries.append(rng.choice(_GENERIC_NAMES))
            elif kind == "wrong":
                entries.append(_make_words(rng, 1, set(self._taken))[0])
        entries = list(dict.fromkeys(entries))
        return "\n".join(f"{i}. {name}" for i, name in enumerate(entries, 1))

    # -- checking generated descriptors ----------------------------------------------------------------

    def judge_descriptor(self, classname: str, descriptor: str) -> str:
        """Whether ``descriptor`` of ``classname`` is ``true``, ``generic``, ``wrong`` or ``unknown`` (a phrase
        the oracle never writes), by the world's ground truth."""
        return judge_descriptor(self._by_name[classname], descriptor)


def caption_species_from_corpus(path: str | Path) -> dict[str, int]:
    """Caption text → species index from a corpus export's metadata (``zsclip world corpus --out``).

    A caption text written for several species (a few generic ones are) maps to the species that has it
    most often (the lower index on a tie): the answer a reader of that caption would most likely give.
    """
    from ..corpus import Corpus

    corpus = Corpus.open(path)
    counts: dict[str, Counter[int]] = {}
    for shard in corpus.shards:
        table = corpus.read_columns(shard, ["caption", "species"])
        for caption, species in zip(table.column("caption").to_pylist(), table.column("species").to_pylist()):
            counts.setdefault(caption, Counter())[int(species)] += 1
    return {caption: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for caption, c in counts.items()}


def judge_descriptor(species: Species, descriptor: str) -> str:
    """Whether ``descriptor`` is ``true`` of ``species``, ``generic`` (true of every species), ``wrong`` (an
    attribute value it does not have) or ``unknown`` (not a toy-world descriptor phrase)."""
    d = _normal(descriptor)
    if d in {_normal(g) for g in _GENERIC}:
        return "generic"
    for key, by_value in _TRUE_PHRASES.items():
        for value, phrases in by_value.items():
            if d in {_normal(p) for p in phrases}:
                return "true" if species.attributes[key] == value else "wrong"
    return "unknown"


# -- the chat-completions server ---------------------------------------------------------------------------

def responder(oracle: Oracle) -> Responder:
    """A ``zsclip.chat_server`` responder answering with ``oracle``: the user messages' text is the prompt,
    the request's ``seed`` varies repeated samples; a request with a non-integer seed is refused (400)."""

    def respond(body: dict[str, Any]) -> str:
        prompt = "\n".join(message_text(m.get("content", "")) for m in body["messages"]
                           if isinstance(m, dict) and m.get("role") == "user")
        try:
            seed = int(body.get("seed") or 0)
        except (TypeError, ValueError):
            raise Refusal(400, f"not a chat-completions request: seed {body.get('seed')!r} is not an integer") from None
        return oracle.answer(prompt, seed)

    return respond


def make_server(host: str = "127.0.0.1", port: int = 0, seed: int = DEFAULT_SEED,
                generic_rate: float = DEFAULT_GENERIC_RATE, wrong_rate: float = DEFAULT_WRONG_RATE,
                corpus: str | Path | None = None,
                relevance_error_rate: float = DEFAULT_RELEVANCE_ERROR_RATE) -> ChatServer:
    """An oracle server for the world of ``seed``, bound to ``host:port`` (0: any free port), not yet serving.

    With ``corpus`` (a corpus export folder) it also answers relevance questions about its captions."""
    lookup = caption_species_from_corpus(corpus) if corpus is not None else None
    oracle = Oracle(build_world(seed), generic_rate, wrong_rate, lookup, relevance_error_rate)
    return ChatServer(responder(oracle), host=host, port=port, models=[MODEL_NAME])


def serve(host: str = "127.0.0.1", port: int = 0, seed: int = DEFAULT_SEED, *,
          generic_rate: float = DEFAULT_GENERIC_RATE, wrong_rate: float = DEFAULT_WRONG_RATE,
          corpus: str | Path | None = None, relevance_error_rate: float = DEFAULT_RELEVANCE_ERROR_RATE) -> ChatServer:
    """Start an oracle server in a background (daemon) thread and return it (``server.url``, ``server.stop()``)."""
    server = make_server(host, port, seed, generic_rate, wrong_rate, corpus, relevance_error_rate).start()
    logger.info("oracle LLM stand-in serving on %s", server.url)
    return server


def llm_serve(
    port: Annotated[int, typer.Option(help="Loopback port to listen on (0: any free port).")] = 8000,
    seed: Annotated[int, typer.Option(help="World seed: the species the oracle knows.")] = DEFAULT_SEED,
    generic_rate: Annotated[float, typer.Option(
        help="Share of answer items that are generic (true of any creature).")] = DEFAULT_GENERIC_RATE,
    wrong_rate: Annotated[float, typer.Option(
        help="Share of answer items that are wrong (hallucinated).")] = DEFAULT_WRONG_RATE,
    corpus: Annotated[Path | None, typer.Option(
        help="Corpus export folder (`zsclip world corpus --out`): answer REAL relevance questions about its "
        "captions from their true species.")] = None,
    relevance_error_rate: Annotated[float, typer.Option(
        help="Share of relevance answers that are wrong.")] = DEFAULT_RELEVANCE_ERROR_RATE,
) -> None:
    """Serve the toy world's oracle (a scripted LLM stand-in, not a model) on 127.0.0.1 until stopped.

    The first lines say where it listens, its process id and how to stop it (Ctrl-C, or ``kill PID`` when
    it runs in the background with ``&``).
    """
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, soft_wrap=True)
    try:
        server = make_server("127.0.0.1", port, seed, generic_rate, wrong_rate, corpus, relevance_error_rate)
    except (OSError, ValueError, ZsclipError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    pid = os.getpid()
    console.print(f"oracle LLM stand-in (world seed {seed}, generic {generic_rate:g}, wrong {wrong_rate:g}) at "
                  f"{server.url}, process id {pid}\n"
                  f"try: zsclip describe --dataset toyworld --llm {MODEL_NAME} --base-url {server.url}\n"
                  f"stop it with Ctrl-C, or from another shell: kill {pid}", highlight=False, markup=False)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops it as cleanly as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)


def _interrupt(signum: int, frame: Any) -> None:
    """Turn SIGTERM into ``KeyboardInterrupt``, so ``kill PID`` closes the server as Ctrl-C does."""
    raise KeyboardInterrupt
