"""Atomic writes: all or nothing, and the result has the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from zsclip._io import atomic_path, write_json_atomic


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
