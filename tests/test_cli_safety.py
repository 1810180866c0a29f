"""The command line refuses unsafe outputs and bad addresses before doing any work, with one clear line."""

from __future__ import annotations

import json
import os

from fixtures_data import make_cub_folder
from typer.testing import CliRunner

from zsclip.cli import app

runner = CliRunner()


def test_an_output_that_is_the_descriptor_file_is_refused_before_the_run(tmp_path, tiny_model, isolated_cache):
    root = make_cub_folder(tmp_path / "data", n_classes=2, images_per_class=2)
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"Black-footed Albatross": ["white"], "Laysan Albatross": ["grey"]}))
    before = desc.read_text()
    args = ["classify", "-d", "cub", "--dataset-root", str(root), "-m", "descriptions", "-p", f"descriptors={desc}",
            "--model", tiny_model["name"], "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu"]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for extra in (["-o", str(desc)], ["--predictions", str(desc)], ["-o", str(fifo)]):
        res = runner.invoke(app, [*args, *extra])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert desc.read_text() == before and not fifo.is_file()
    assert not (isolated_cache / "stores").exists()  # refused before any image was encoded

    real = tmp_path / "kept" / "record.json"
    real.parent.mkdir()
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    res = runner.invoke(app, [*args, "-o", str(link)])
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and json.loads(real.read_text())["method"]["name"] == "descriptions"
    assert os.readlink(link) == str(real)


def test_datasets_download_with_a_bad_url(tmp_path):
    res = runner.invoke(app, ["datasets", "download", "cub", "--root", str(tmp_path / "d"), "--url", "notaurl"])
    assert res.exit_code == 2 and "not a download address" in res.output and "Traceback" not in res.output
