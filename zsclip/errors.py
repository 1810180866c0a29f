"""Exceptions zsclip raises for bad input.

Every error says what was wrong, where (file, field, option) and what to do about it. The CLI prints
the message of a ``ZsclipError`` without a stack trace; anything else is a bug and keeps its trace.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator


class ZsclipError(Exception):
    """Base class of the errors a user can act on."""


class WeightsNotFoundError(ZsclipError):
    """Model weights are not on this machine and cannot be downloaded."""


class StoreMismatchError(ZsclipError):
    """An embedding store was made by another model, preprocessing or dataset."""


class DatasetError(ZsclipError):
    """A dataset folder, split or annotation file is missing or malformed."""


class DescriptorFileError(ZsclipError):
    """A descriptor / prompt file cannot be read or does not match the dataset's classes."""


class CorruptCacheError(ZsclipError):
    """A cached file (image store, text cache) fails its checks: it is never used, it is rebuilt."""


class StorageError(ZsclipError, OSError):
    """A file cannot be written: the disk is full, the folder is read-only, or the path is not a file.

    Also an ``OSError``, so code that tolerates failed optional writes (``except OSError``) still does.
    """


_INTERFACE: contextvars.ContextVar[str] = contextvars.ContextVar("zsclip_interface", default="python")


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Mark the errors raised inside as the command line's: ``option`` then names CLI flags."""
    token = _INTERFACE.set("cli")
    try:
        yield
    finally:
        _INTERFACE.reset(token)


def option(cli: str, python: str) -> str:
    """How an error names a setting: the CLI flag (``--dataset-root DIR``) inside ``zsclip`` commands, the Python
    argument (``root=...``) when the library is called from Python."""
    return cli if _INTERFACE.get() == "cli" else python
