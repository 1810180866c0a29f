"""Fetching datasets: dataset cards, checksummed downloads and safe archive extraction.

A dataset card (``datasets/<name>.json``, shipped with zsclip) names the archive's address and checksum.
A download streams to a temporary file and takes its final name only once the checksum matches; an
archive is checked member by member (no absolute paths, no ``..`` escapes, no links leaving the target,
no device files) before anything is written, and is unpacked into a temporary folder that is moved into
place when complete, so a crash never leaves a half-extracted dataset that looks whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .._io import atomic_path, read_json
from ..errors import DatasetError, ZsclipError, option
from ..paths import cache_root, resource_dir

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TAR_SUFFIXES = (".tgz", ".tar.gz", ".tar")
_ZIP_SUFFIXES = (".zip",)


def load_card(name: str) -> dict[str, Any]:
    """The dataset card ``datasets/<name>.json`` shipped with zsclip (an empty dict when there is none)."""
    path = resource_dir("datasets") / f"{name}.json"
    if not path.is_file():
        return {}
    try:
        card = read_json(path, what=f"dataset card of {name!r}")
    except ZsclipError as exc:
        raise DatasetError(str(exc)) from None
    if not isinstance(card, dict):
        raise DatasetError(f"dataset card {path} must hold a JSON object, got {type(card).__name__}")
    return card


def default_data_root() -> Path:
    """Where downloaded datasets go when no root is given: ``<cache root>/datasets``."""
    return cache_root() / "datasets"


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, sha256: str | None = None) -> Path:
    """Stream ``url`` to ``dest``, checking ``md5`` / ``sha256`` when given.

    The bytes go to a temporary file beside ``dest``, renamed to ``dest`` only when every given checksum
    matches; on a mismatch or a broken connection the temporary file is removed and ``DatasetError``
    says what went wrong. A progress bar is shown on stderr.
    """
    dest = Path(dest)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https", "ftp", "file") or not (parsed.netloc or parsed.scheme == "file"):
        raise DatasetError(f"{url!r} is not a download address (expected http://..., https://..., ftp://... or "
                           "file://...); check --url")
    digests = _hashers(md5, sha256)
    logger.info("downloading %s to %s", url, dest)
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as fh:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with _progress() as progress:
                    task = progress.add_task(dest.name, total=total)
                    while chunk := response.read(_CHUNK):
                        fh.write(chunk)
                        for hasher, _ in digests.values():
                            hasher.update(chunk)
                        progress.advance(task, len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DatasetError(
                f"could not download {url}: {reason}. Check the address and the network, or download the "
                f"file by hand and put it at {dest}"
            ) from None
        _check_digests(digests, url, "the download was removed. The file is damaged or the address serves "
                       "something else: try again or check the address")
    return dest


def verify_checksum(path: str | os.PathLike, md5: str | None = None, sha256: str | None = None) -> None:
    """Check a file on disk against ``md5`` / ``sha256`` (``DatasetError`` naming both on a mismatch)."""
    path = Path(path)
    digests = _hashers(md5, sha256)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for hasher, _ in digests.values():
                hasher.update(chunk)
    _check_digests(digests, path, "delete the file and download it again")


def _check_digests(digests: dict[str, tuple[Any, str]], what: str | os.PathLike, advice: str) -> None:
    """Raise ``DatasetError`` naming the algorithm, expected and actual digest when one does not match."""
    for kind, (hasher, expected) in digests.items():
        got = hasher.hexdigest()
        if got != expected:
            raise DatasetError(f"{kind} checksum mismatch for {what}: expected {expected}, got {got}; {advice}")


def _hashers(md5: str | None, sha256: str | None) -> dict[str, tuple[Any, str]]:
    """``{kind: (hasher, expected hex digest)}`` for the checksums given."""
    digests: dict[str, tuple[Any, str]] = {}
    if md5:
        digests["md5"] = (hashlib.md5(usedforsecurity=False), md5.lower())
    if sha256:
        digests["sha256"] = (hashlib.sha256(), sha256.lower())
    return digests


def _progress() -> Progress:
    """A byte-counting progress bar on stderr, drawn only when stderr is a terminal and ZSCLIP_PROGRESS != 0."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal or os.environ.get("ZSCLIP_PROGRESS", "1") == "0",
    )


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    """The member's path relative to the destination; ``DatasetError`` if it is absolute or escapes."""
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if path.is_absolute() or (len(normalized) > 1 and normalized[1] == ":"):
        raise DatasetError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise DatasetError(f"refusing to extract {archive}: member {name!r} escapes the destination via '..'")
    return path


def _inside(target: PurePosixPath) -> bool:
    """Whether a relative path, once ``..`` and ``.`` are resolved lexically, stays inside its root."""
    depth = 0
    for part in target.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in (".", ""):
            depth += 1
    return True


def _check_tar(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Check every member of ``tar`` (see the module docstring) and return them."""
    members = tar.getmembers()
    for member in members:
        path = _check_member_name(member.name, archive)
        if member.isdev():
            raise DatasetError(f"refusing to extract {archive}: member {member.name!r} is a device or pipe")
        if member.issym():
            link = PurePosixPath(member.linkname)
            if link.is_absolute() or not _inside(path.parent / link):
                raise DatasetError(
                    f"refusing to extract {archive}: member {member.name!r} is a symbolic link pointing "
                    f"outside the destination ({member.linkname!r})"
                )
        elif member.islnk():
            link = PurePosixPath(member.linkname)
            if link.is_absolute() or not _inside(link):
                raise DatasetError(
                    f"refusing to extract {archive}: member {member.name!r} is a hard link pointing "
                    f"outside the destination ({member.linkname!r})"
                )
    return members


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    """Check every member name of ``zf``; zip links are refused outright."""
    for info in zf.infolist():
        _check_member_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"refusing to extract {archive}: member {info.filename!r} is a symbolic link")


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Safely unpack a ``.tgz`` / ``.tar.gz`` / ``.tar`` / ``.zip`` archive into ``dest``.

    Every member is checked before anything is written (``DatasetError`` names the first bad one). The
    archive is unpacked into a temporary folder inside ``dest`` and its top-level entries are then moved
    into ``dest`` (replacing entries of the same name). Returns the top-level paths created in ``dest``.
    """
    archive = Path(archive)
    dest = Path(dest)
    name = archive.name.lower()
    if not archive.is_file():
        raise DatasetError(f"archive not found: {archive}")
    if not name.endswith(_TAR_SUFFIXES + _ZIP_SUFFIXES):
        raise DatasetError(
            f"cannot extract {archive}: unknown archive type (expected one of "
            f"{', '.join(_TAR_SUFFIXES + _ZIP_SUFFIXES)})"
        )
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        logger.info("extracting %s into %s", archive, dest)
        if name.endswith(_ZIP_SUFFIXES):
            try:
                with zipfile.ZipFile(archive) as zf:
                    _check_zip(zf, archive)
                    zf.extractall(staging)
            except zipfile.BadZipFile as exc:
                raise DatasetError(f"cannot extract {archive}: not a valid zip file ({exc})") from None
        else:
            try:
                with tarfile.open(archive) as tar:
                    members = _check_tar(tar, archive)
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(staging, members=members, filter="data")
                    else:
                        tar.extractall(staging, members=members)
            except tarfile.TarError as exc:
                raise DatasetError(f"cannot extract {archive}: {exc}. Download the archive again") from None
        created = []
        for entry in sorted(staging.iterdir()):
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                logger.warning("replacing the existing folder %s with the archive's copy", target)
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                logger.warning("replacing the existing file %s with the archive's copy", target)
                target.unlink()
            os.replace(entry, target)
            created.append(target)
        return created
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(name: str, root: str | os.PathLike | None = None, url: str | None = None) -> Path:
    """Download and unpack dataset ``name`` as its card describes; return the folder to pass as its root.

    ``root`` defaults to ``<cache root>/datasets``; ``url`` replaces the card's address (a mirror of the
    same archive: the card's checksum still applies). Nothing is downloaded when the card's ``extracts_to``
    folder already exists under ``root``; the archive is deleted once unpacked.
    """
    card = load_card(name)
    spec = card.get("download")
    if not isinstance(spec, dict) or not (url or spec.get("url")):
        raise DatasetError(
            f"dataset {name!r} has no download address in its card; download it by hand and pass its folder "
            f"with {option('--dataset-root DIR', 'root=DIR')}"
        )
    root = Path(root).expanduser() if root is not None else default_data_root()
    extracted = root / spec.get("extracts_to", name)
    if extracted.exists():
        logger.info("%s is already extracted at %s; not downloading", name, extracted)
        return extracted
    address = url or spec["url"]
    archive = root / (spec.get("archive_name") or PurePosixPath(address.split("?")[0]).name)
    if archive.is_file():
        logger.info("using the archive already at %s", archive)
        verify_checksum(archive, md5=spec.get("md5"), sha256=spec.get("sha256"))
    else:
        download_file(address, archive, md5=spec.get("md5"), sha256=spec.get("sha256"))
    extract_archive(archive, root)
    if not extracted.exists():
        raise DatasetError(
            f"the archive {archive} did not contain {extracted.name}/ as the card of {name!r} says; check "
            "that the address (--url) serves the right archive"
        )
    archive.unlink()
    logger.info("%s is ready at %s", name, extracted)
    return extracted
