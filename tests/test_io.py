"""Atomic writes (all or nothing, usual permissions, through symlinks, never onto special files), output-path
checks made before a run, and the JSON reader's refusals."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import pytest

from zsclip._io import atomic_path, check_output_path, check_output_paths, read_json, write_json_atomic
from zsclip.errors import StorageError, ZsclipError


def test_atomic_write_is_all_or_nothing(tmp_path):
    target = tmp_path / "out" / "record.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]  # no temporary file left


def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_records_name_shipped_prompt_files_the_same_everywhere(tmp_path, monkeypatch):
    from zsclip.paths import display_path, locate, resource_dir

    shipped = resource_dir("prompts") / "toyworld" / "descriptors.json"
    assert display_path(shipped) == "prompts/toyworld/descriptors.json"
    monkeypatch.chdir(tmp_path)  # anywhere: the name still finds the shipped file
    assert locate("prompts/toyworld/descriptors.json").resolve() == shipped.resolve()
    assert display_path(tmp_path / "mine.json") == str(tmp_path / "mine.json")


def test_writes_go_through_symlinks_and_keep_the_link(tmp_path):
    real = tmp_path / "results" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_json_atomic(link, {"a": 1})
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text()) == {"a": 1}


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_special_files_are_refused(tmp_path, kind):
    target = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:  # a private copy of the null device: a failing test must never be able to replace /dev/null
        try:
            os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except (PermissionError, AttributeError):
            pytest.skip("cannot make a device file here")
    with pytest.raises(StorageError, match="not a regular file"):
        write_json_atomic(target, {})
    with pytest.raises(StorageError, match="not a regular file"):
        check_output_path(target)
    assert target.exists() and not target.is_file()


def test_an_output_that_is_an_input_is_refused(tmp_path):
    descriptors = tmp_path / "desc.json"
    descriptors.write_text("{}")
    link = tmp_path / "alias.json"
    link.symlink_to(descriptors)
    for out in (descriptors, link):
        with pytest.raises(StorageError, match="also an input"):
            check_output_path(out, inputs=[None, "attributes", str(descriptors)])
    with pytest.raises(StorageError, match="same file"):
        check_output_paths({"--output": tmp_path / "a.json", "--predictions": tmp_path / "a.json"})
    check_output_path(tmp_path / "new" / "folder" / "out.json", inputs=[descriptors])  # made at write time


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into any folder")
def test_an_unwritable_output_folder_is_refused_before_the_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(StorageError, match="not writable"):
            check_output_path(locked / "sub" / "out.json")
    finally:
        locked.chmod(0o755)


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match="out.json.*disk is full"):
        write_json_atomic(tmp_path / "out.json", {})
    assert list(tmp_path.iterdir()) == []


def test_read_json_refuses_repeated_keys_and_non_utf8(tmp_path):
    dup = tmp_path / "dup.json"
    dup.write_text('{"Cardinal": ["red"], "Blue Jay": ["blue"], "Cardinal": ["crest"]}')
    with pytest.raises(ZsclipError, match="'Cardinal' twice"):
        read_json(dup)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"Pinson": ["tête noire"]}'.encode("latin-1"))
    with pytest.raises(ZsclipError, match="not UTF-8"):
        read_json(latin)


def _make_and_fill(folder: str, barrier, me: int, rounds: int) -> None:
    """Child process: for each round, wait for the others, then create (or join) that round's database at once."""
    from zsclip._io import sqlite_connection

    try:
        for r in range(rounds):
            barrier.wait()
            path = Path(folder) / f"round-{r}.sqlite"
            with sqlite_connection(path) as db:
                db.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, who INTEGER)")
            with sqlite_connection(path) as db:
                db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)", [(f"{me}-{i}", me) for i in range(5)])
    except BaseException:
        barrier.abort()  # the others stop at once instead of waiting for this process
        raise


def test_processes_creating_one_sqlite_file_at_once_all_succeed(tmp_path):
    """Switching a new file to WAL is refused at once ("database is locked") while another process switches it;
    sqlite_connection waits instead. (Without that wait, a run of this test fails more often than not.) Four
    processes start on each of 40 new files at the same moment."""
    import multiprocessing as mp
    import sqlite3

    ctx = mp.get_context("spawn")
    procs, rounds = 4, 40
    barrier = ctx.Barrier(procs, timeout=120)
    children = [ctx.Process(target=_make_and_fill, args=(str(tmp_path), barrier, me, rounds)) for me in range(procs)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [child.exitcode for child in children] == [0] * procs
    for r in range(rounds):
        with contextlib.closing(sqlite3.connect(tmp_path / f"round-{r}.sqlite")) as db:
            assert db.execute("SELECT COUNT(*), COUNT(DISTINCT who) FROM rows").fetchone() == (5 * procs, procs)
