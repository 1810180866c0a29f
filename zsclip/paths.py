"""Where zsclip keeps things: the cache root and the data files shipped with the package.

The cache root holds image stores, the text-embedding cache and downloaded datasets. It is
``$ZSCLIP_HOME`` when set, else the per-user cache folder (``$XDG_CACHE_HOME/zsclip`` or
``~/.cache/zsclip``).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def cache_root() -> Path:
    """The folder under which zsclip caches stores, text embeddings and datasets."""
    env = os.environ.get("ZSCLIP_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "zsclip"


def resource_dir(name: str) -> Path:
    """A data folder shipped with zsclip (``prompts`` or ``datasets``).

    In a wheel the folders live in ``zsclip/_data/``; in a source checkout (editable install) they are
    the repository's top-level folders.
    """
    packaged = _PACKAGE_DIR / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent / name


def display_path(path: str | Path) -> str:
    """How records name a file: ``prompts/...`` for the shipped prompt files (the same on every machine),
    else the path as given."""
    prompts = resource_dir("prompts").resolve()
    try:
        return "prompts/" + Path(path).resolve().relative_to(prompts).as_posix()
    except ValueError:
        return str(path)


def locate(name: str | Path) -> Path:
    """The file a ``display_path`` names: ``prompts/...`` in the shipped prompts folder if it is there."""
    name = Path(name)
    if not name.exists() and name.parts[:1] == ("prompts",):
        shipped = resource_dir("prompts").joinpath(*name.parts[1:])
        if shipped.exists():
            return shipped
    return name


def cache_display(path: str | Path) -> str:
    """How records name a file under the cache root: ``$ZSCLIP_HOME/...`` (the same on every machine), else the
    path as given."""
    try:
        return "$ZSCLIP_HOME/" + Path(path).resolve().relative_to(cache_root().resolve()).as_posix()
    except ValueError:
        return str(path)
