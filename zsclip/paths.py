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
