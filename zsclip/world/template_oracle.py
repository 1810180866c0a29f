"""The toy world's LLM stand-in for prompt-template requests: answers to feedback the way an LLM tends to.

A named stand-in, not a model. ``template_reply`` is a pure function of the request's text and a seeded RNG.
The rule:

1. Read the request: "- " lines under a heading that says "well" are the good templates, under a heading
   that says "badly" the bad ones; under any other heading they are plain examples (treated like good ones,
   without anything to avoid). "Write N new template" (a number, or a word up to "ten") gives how many to
   write (default 1).
2. Words to avoid, read the way an LLM reads a contrast: for each bad template, its words that no good template
   contains; of those, only the modifiers ("black and white", "close-up", a habitat, "video game") when it
   has any, and its medium ("photo", "sketch", ... the noun of a style phrase) only when nothing else sets it
   apart. So "a black and white sketch of a {}." listed as bad steers away from "black and white", not from
   sketches; "a photo of a {}." listed as bad (and no good photo) steers away from photos.
3. Each template written is, by chance:
   - invalid, at ``invalid_rate``: the "{}" is dropped or written "{name}" (what a careless LLM does);
   - noise, at ``noise_rate`` (and always when there is no example): a random style template of the world,
     e.g. "a cartoon drawing of a {}.";
   - otherwise a variation of a random good template, with one or two edits: swap its style phrase for a
     related one (one used by another good template half of the time, else any of the world's style
     phrases; a template with no style phrase the stand-in knows, e.g. "a rendition of the {}." or "the
     plushie {}.", has the words before "{}" rewritten as one, "a sketch of a {}.");
     cross it with another good template (its text before "{}" with the other's text after);
     add a describing word before the style noun or a habitat after "{}"; drop a describing word.
     A variation that contains a word to avoid, or repeats a template of the request, is redrawn (up to 5
     times).
4. The reply lists the templates as "- " lines, sometimes after a one-line preamble (which a parser that
   reads only "- " lines ignores).
"""

from __future__ import annotations

import random
import re

from .corpus import _STYLE_PHRASES
from .spec import HABITATS

#: the world's style phrases ("a photo of", "a pencil sketch of", ...) plus a few LLM favourites
STYLE_PHRASES = tuple(sorted({p for options in _STYLE_PHRASES.values() for p in options}
                             | {"a drawing of", "a black and white sketch of", "an illustration of"}))
#: words a template may gain before its style noun
DESCRIBING_WORDS = ("detailed", "simple", "rough", "quick", "small", "clear", "black and white")
_HABITAT_PHRASES = tuple(f"on {h}" if h in ("sand", "grass", "snow", "rocks") else f"in the {h}" for h in HABITATS)
#: the medium nouns of the style phrases ("photo", "sketch", "drawing", ...)
MEDIA = frozenset(p.split()[-2] for p in STYLE_PHRASES)
_PREAMBLES = ("Here are some templates:", "Sure! New templates:", "Templates:")
_WORD = re.compile(r"[a-z]+")
_STOP = {"a", "an", "the", "of", "in", "on", "with", "and"}
_NUMBERS = {w: i for i, w in enumerate(("one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                         "ten"), start=1)}


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def read_request(prompt: str) -> tuple[list[str], list[str], int]:
    """The good (or example) templates, the bad ones and the number asked for, from a request's text."""
    good: list[str] = []
    bad: list[str] = []
    target: list[str] | None = None
    for line in prompt.splitlines():
        stripped = line.strip()
        if stripped.startswith("- "):
            if target is not None:
                target.append(re.sub(r"\s*\(score [^)]*\)$", "", stripped[2:].strip()))
        elif stripped.endswith(":"):
            lowered = stripped.lower()
            target = bad if "badly" in lowered or "worst" in lowered else good
        elif stripped:
            target = None
    match = re.search(r"write (\w+) new template", prompt, re.IGNORECASE)
    word = match.group(1).lower() if match else "1"
    count = int(word) if word.isdigit() else _NUMBERS.get(word, 1)
    return good, bad, max(1, count)


def words_to_avoid(good: list[str], bad: list[str]) -> set[str]:
    """The words a reply avoids (rule 2 of the module docstring)."""
    good_words = _words(" ".join(good))
    avoid: set[str] = set()
    for template in bad:
        own = _words(template) - good_words
        avoid |= (own - MEDIA) or own
    return avoid


def _style_of(template: str) -> str | None:
    found = [p for p in STYLE_PHRASES if p in template]
    return max(found, key=len) if found else None


def _vary(base: str, good: list[str], rng: random.Random) -> str:
    out = base
    for _ in range(rng.choice((1, 1, 2))):
        op = rng.choice(("swap", "swap", "cross", "add", "drop"))
        style = _style_of(out)
        if op == "swap":
            others = [s for s in (_style_of(g) for g in good) if s and s != style]
            new = rng.choice(others) if others and rng.random() < 0.5 else rng.choice(STYLE_PHRASES)
            if style:
                out = out.replace(style, new, 1)
            else:  # no known medium ("a rendition of the {}.", "the plushie {}."): rewrite what precedes {}
                out = f"{new} a {{}}" + out.split("{}", 1)[1]
        elif op == "cross" and len(good) > 1:
            other = rng.choice([g for g in good if g != base] or good)
            out = out.split("{}")[0] + "{}" + other.split("{}", 1)[1]
        elif op == "add":
            if style and rng.random() < 0.5:
                words = style.split()
                noun_at = 1 if words[0] in ("a", "an") else 0
                article = "a" if words[0] in ("a", "an") else ""
                adjective = rng.choice(DESCRIBING_WORDS)
                rest = " ".join(words[noun_at:])
                new = f"{article} {adjective} {rest}".strip()
                out = out.replace(style, new, 1)
            else:
                head, tail = out.split("{}", 1)
                out = f"{head}{{}} {rng.choice(_HABITAT_PHRASES)}{tail if tail.strip() else '.'}"
        elif op == "drop":
            for word in DESCRIBING_WORDS:
                if f" {word} " in out:
                    out = out.replace(f" {word} ", " ", 1)
                    break
    out = re.sub(r"\s+", " ", out).strip()
    out = re.sub(r"\ba ([aeiou])", r"an \1", out)
    return out if out.count("{}") == 1 else base


def _noise(rng: random.Random) -> str:
    return f"{rng.choice(STYLE_PHRASES)} a {{}}."


def _invalid(template: str, rng: random.Random) -> str:
    return template.replace("{}", rng.choice(("", "{name}", "creature")), 1)


def template_reply(prompt: str, rng: random.Random, *, invalid_rate: float = 0.1, noise_rate: float = 0.15) -> str:
    """The stand-in's reply to a template request (the rule is in the module docstring)."""
    good, bad, count = read_request(prompt)
    avoid = words_to_avoid(good, bad)
    lines = []
    for _ in range(count):
        if not good or rng.random() < noise_rate:
            template = _noise(rng)
        else:
            shown = set(good) | set(bad)
            template = _vary(rng.choice(good), good, rng)
            for _ in range(5):
                if not (_words(template) & avoid) and template not in shown:
                    break
                template = _vary(rng.choice(good), good, rng)
        if rng.random() < invalid_rate:
            template = _invalid(template, rng)
        lines.append(f"- {template}")
    preamble = rng.choice(_PREAMBLES) + "\n" if rng.random() < 0.3 else ""
    return preamble + "\n".join(lines)
