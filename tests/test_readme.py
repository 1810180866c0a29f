"""Every number the README quotes comes with the command that prints it: run each command of the README's
table of quoted numbers on the toy world and compare, to the printed precision (the README's main command,
`zsclip classify --dataset toyworld --method descriptions`, is one of the rows)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsclip.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| (top1|precision@#true) ([0-9.]+)(?: ± ([0-9.]+))?%? .*\| `(zsclip [^`]+)` \|$")


def quoted_rows() -> list[tuple[str, str, str | None, str]]:
    rows = [m.groups() for line in README.read_text().splitlines() if (m := ROW.match(line))]
    assert len(rows) >= 5, "the README's table of quoted numbers is missing"
    return rows


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One cache for every row, so the toy world's stores are rendered once."""
    return tmp_path_factory.mktemp("readme-home")


def test_the_main_command_is_quoted():
    commands = [r[3] for r in quoted_rows()]
    assert "zsclip classify --dataset toyworld --method descriptions" in commands
    assert "zsclip classify --dataset toyworld --method descriptions" in README.read_text().split("## A short tour")[0]


@pytest.mark.parametrize("metric, value, std, command", quoted_rows(), ids=lambda v: str(v)[:40])
def test_readme_numbers_are_what_their_commands_print(metric, value, std, command, shared_home, monkeypatch,
                                                      tmp_path):
    monkeypatch.setenv("ZSCLIP_HOME", str(shared_home))
    record_path = tmp_path / "record.json"
    res = CliRunner().invoke(app, [*shlex.split(command)[1:], "--device", "cpu", "-o", str(record_path)])
    assert res.exit_code == 0, res.output
    record = json.loads(record_path.read_text())
    if metric == "top1":
        got = f"{record['metrics']['top1']:.2f}"
        got_std = f"{record['metrics']['top1_std']:.2f}" if "top1_std" in record["metrics"] else None
        assert f"{got}{' ± ' + got_std if got_std else ''}" in res.output  # what the console printed
    else:
        got, got_std = f"{100 * record['results']['ranking_quality']['precision_at_num_true']:.1f}", None
    assert got == value, f"README says {value}, `{command}` gives {got}"
    assert got_std == std
