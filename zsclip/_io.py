"""Small file-system helpers: atomic writes, output-path checks, file locks and the JSON files zsclip keeps.

A write goes to a temporary file in the destination folder and is renamed over the target, so a crash
never leaves a half-written file where a reader expects a whole one. A target that is a symbolic link is
written through (its destination is replaced, the link stays); a target that is a directory, device or
FIFO is refused. A full disk or a read-only folder becomes a ``StorageError`` that says which file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import StorageError, ZsclipError

log = logging.getLogger(__name__)

#: errors that mean "this folder cannot be written" and "the disk is full"
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def storage_error(exc: OSError, path: str | os.PathLike, action: str = "write") -> StorageError:
    """A ``StorageError`` that says why ``path`` could not be written and what to do."""
    if exc.errno in DISK_FULL:
        advice = "the disk is full: free some space, or write elsewhere (another --output, or ZSCLIP_HOME)"
    elif exc.errno in NOT_WRITABLE:
        advice = ("the folder is not writable: write elsewhere (another --output or --store, or point "
                  "ZSCLIP_HOME at a writable folder)")
    else:
        advice = exc.strerror or str(exc)
    error = StorageError(f"cannot {action} {path}: {exc.strerror or exc}; {advice}")
    error.errno = exc.errno
    return error


def _kind_of(mode: int) -> str | None:
    """What a non-regular file is ("a directory", "a FIFO", ...), or None for a regular file."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None


def write_target(target: str | os.PathLike) -> Path:
    """The file a write to ``target`` replaces: ``target`` itself, or where it points if it is a symlink.

    Raises ``StorageError`` when that is a directory, device, FIFO or socket (zsclip writes regular files).
    """
    real = Path(os.path.realpath(target))
    try:
        kind = _kind_of(real.stat().st_mode)
    except FileNotFoundError:
        kind = None
    if kind:
        shown = f"{target} (-> {real})" if str(real) != str(target) else str(target)
        raise StorageError(f"refusing to write {shown}: it is {kind}, not a regular file; give a file path")
    return real


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    The temporary file is removed if the body raises, so nothing half-written remains. A symlink
    ``target`` is written through (see ``write_target``); a full disk or an unwritable folder raises
    ``StorageError`` naming ``target``.
    """
    shown = Path(target)
    target = write_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        if exc.errno in NOT_WRITABLE | DISK_FULL:
            raise storage_error(exc, shown) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the result the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in DISK_FULL:
            raise storage_error(exc, shown) from None
        raise


def check_output_path(path: str | os.PathLike | None, inputs: Iterable[str | os.PathLike | None] = (),
                      option: str = "--output") -> None:
    """Check, before any work, that ``path`` can take an output file of this run.

    Refuses (``StorageError``) a directory, device, FIFO or socket (a symlink is followed), a path that
    is one of the run's ``inputs`` (it would overwrite the user's file), and a destination whose folder
    (or nearest existing parent, when folders are still to be made) is not writable. ``None`` passes.
    """
    if path is None:
        return
    real = write_target(path)
    for item in inputs:
        if item is None or not str(item):
            continue
        other = Path(os.path.realpath(Path(item).expanduser()))
        if other == real or (other.exists() and real.exists() and os.path.samefile(other, real)):
            raise StorageError(f"{option} {path} is also an input of this run ({item}); writing it would "
                               "overwrite that file. Choose another output path")
    folder = real.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise StorageError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"{option} {path}: the folder {folder} is not writable; choose another path")


def check_output_paths(outputs: dict[str, str | os.PathLike | None],
                       inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """``check_output_path`` for each ``{option: path}``, also refusing two options given the same path."""
    inputs = list(inputs)
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_output_path(path, inputs, option)
        real = Path(os.path.realpath(path))
        if real in seen:
            raise StorageError(f"{seen[real]} and {option} are the same file ({path}); give them different paths")
        seen[real] = option


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (fsync before the rename)."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``target`` atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    write_bytes_atomic(target, text.encode("utf-8"))


class _DuplicateKey(ValueError):
    """A JSON object names one key twice (raised while parsing, turned into a ``ZsclipError``)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses an object with a repeated key (JSON would keep the last one)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a UTF-8 JSON file; a parse error, a repeated key in one object or non-UTF-8 bytes give a
    ``ZsclipError`` that names the file (and the position or key)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise ZsclipError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ZsclipError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise ZsclipError(
            f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8."
        ) from None
    except _DuplicateKey as exc:
        raise ZsclipError(
            f"{what} {path} names the key {exc.args[0]!r} twice in one object; JSON would silently keep only "
            "the last one. Merge or rename the entries."
        ) from None
    except json.JSONDecodeError as exc:
        raise ZsclipError(
            f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            "Fix or regenerate the file."
        ) from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """Read a UTF-8 text file, with a ``ZsclipError`` naming the file when it is missing or not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZsclipError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ZsclipError(
            f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8."
        ) from None


#: how long (seconds) a SQLite connection waits for another process's lock before it fails
SQLITE_BUSY_TIMEOUT = 60.0


def _enter_wal(db: sqlite3.Connection) -> None:
    """Switch ``db`` to WAL mode, waiting while another connection holds the lock.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once,
    without its busy handler, when another process is making or switching the same file; so this waits
    (up to the busy timeout) as the busy handler would have.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    pause = 0.002
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.1)


@contextlib.contextmanager
def sqlite_connection(path: str | os.PathLike, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    """A WAL-mode SQLite connection that commits on success, rolls back on error and is always closed.

    WAL lets readers and one writer work at once; the 60 s busy timeout makes concurrent writers wait
    for each other instead of failing, so several processes can share one cache file. ``read_only``
    opens a file in a folder zsclip cannot write (as immutable: no lock or WAL files are made).
    """
    if read_only:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    else:
        db = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT)
    try:
        if not read_only:
            _enter_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
        with db:
            yield db
    finally:
        db.close()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, shared: bool = False, waiting: str = "") -> Iterator[bool]:
    """Hold an advisory lock on ``path`` (made if missing): exclusive, or ``shared`` for readers.

    Yields whether the folder is writable: False when ``path`` cannot be made or opened for writing
    because its folder is read-only (the lock is still taken when the file exists and can be read).
    ``waiting`` is logged when another process holds the lock and this one has to wait. The lock ends
    with the block, or when the process dies (it is an ``flock`` on an open file).
    """
    import fcntl

    writable = True
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        writable = False
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield False
            return
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.warning("%s", waiting)
            fcntl.flock(fd, mode)
        yield writable
    finally:
        os.close(fd)
