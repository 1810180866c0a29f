"""The command line, as a user runs it, on a generated CUB folder with the tiny model."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest
from fixtures_data import make_cub_folder, make_tarball, serve_directory
from typer.testing import CliRunner

from zsclip.cli import app
from zsclip.paths import resource_dir

runner = CliRunner()


@pytest.fixture()
def cub_root(tmp_path):
    return make_cub_folder(tmp_path / "data", n_classes=5, images_per_class=6)


def _model_args(tiny_model):
    return ["--model", tiny_model["name"], "--pretrained", str(tiny_model["checkpoint"]), "--device", "cpu"]


def test_classify_descriptions_writes_record_and_predictions(cub_root, tiny_model, tmp_path):
    out, preds = tmp_path / "results" / "cub.json", tmp_path / "preds.parquet"
    args = ["classify", "--dataset", "cub", "--dataset-root", str(cub_root), "--method", "descriptions",
            "-p", "descriptors=attributes", *_model_args(tiny_model), "--output", str(out),
            "--predictions", str(preds), "--explain", "1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "top1" in first.output and "I saw a" in first.output
    record = json.loads(out.read_text())
    assert record["kind"] == "classify" and record["dataset"]["name"] == "cub" and record["dataset"]["split"] == "test"
    assert record["method"]["name"] == "descriptions" and record["method"]["params"]["descriptors"] == "attributes"
    assert record["model"]["name"] == tiny_model["name"] and record["zsclip_version"]
    assert set(record["metrics"]) >= {"top1", "top5", "mean_per_class_recall", "per_class_accuracy"}
    assert record["counts"]["images_encoded"] == {"test": 14} and record["counts"]["images_skipped"] == {"test": 1}
    assert record["counts"]["texts_encoded"] == record["counts"]["texts"] > 0
    assert record["fit_info"]["descriptor_source"] == "attributes(threshold=50)"
    assert "classes_without_descriptors" not in record["method"]["params"]
    table = pq.read_table(preds)
    assert table.num_rows == 14 and {"prediction", "topk", "topk_scores", "correct"} <= set(table.column_names)

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    again = json.loads(out.read_text())
    assert again["counts"]["images_encoded"] == {"test": 0} and again["counts"]["texts_encoded"] == 0
    assert "encoded this run: images test 0 (0 in all), 0 texts" in second.output
    assert again["metrics"] == record["metrics"]


def test_classnames_with_template_ensemble(cub_root, tiny_model, tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["classify", "-d", "cub", "--dataset-root", str(cub_root), "--method", "classnames",
                              "-p", "templates=ensemble", *_model_args(tiny_model), "-o", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    assert record["method"]["params"] == {"templates": "ensemble"} and record["fit_info"]["num_templates"] == 7


def test_embed_then_store_info(cub_root, tiny_model, tmp_path):
    store = tmp_path / "store"
    res = runner.invoke(app, ["embed", "-d", "cub", "--dataset-root", str(cub_root), "--split", "train",
                              *_model_args(tiny_model), "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "encoded this run: 10" in res.output  # 15 official training images, one per class carved into val
    info = runner.invoke(app, ["store", "info", str(store)])
    assert info.exit_code == 0
    manifest = json.loads(info.output)
    assert manifest["split"] == "train" and manifest["count"] == 10


def test_explain_command(cub_root, tiny_model):
    res = runner.invoke(app, ["explain", "-d", "cub", "--dataset-root", str(cub_root), "--image", "0",
                              "--image", "2", "-p", "descriptors=attributes", *_model_args(tiny_model), "--json"])
    assert res.exit_code == 0, res.output
    assert res.output.count('"rows"') == 2 and '"similarity"' in res.output
    bad = runner.invoke(app, ["explain", "-d", "cub", "--dataset-root", str(cub_root), "--image", "99",
                              "-p", "descriptors=attributes", *_model_args(tiny_model)])
    assert bad.exit_code == 2 and "out of range" in bad.output


def test_listing_commands():
    res = runner.invoke(app, ["datasets", "list"])
    assert res.exit_code == 0 and "cub" in res.output and "folder" in res.output
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "ViT-B-32" in res.output and "openai" in res.output


@pytest.mark.parametrize("extra, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "descriptions", "-p", "descriptors=missing.json"], "no such file"),
    (["--split", "valid"], "has no split 'valid'"),
    (["-p", "templates=no slot here"], "is not a template"),
    (["-p", "template=simple"], "classnames has no parameter 'template' (did you mean 'templates'?)"),
    (["-m", "dds", "-p", "k=0"], "the 'k' parameter of dds must be an int ≥ 1; got 0"),
    (["-m", "dds", "-p", "weight=nan"], "the 'weight' parameter of dds must be a finite float or None; got nan"),
    (["-m", "waffle", "--seeds", "0"], "seeds must be ≥ 1"),
    (["-m", "descriptions", "--seeds", "3"], "--seeds applies to randomised methods"),
    (["-m", "cupl", "-p", "aggregation=max"], "cupl has no parameter 'aggregation'"),
    (["-m", "descriptions", "-p", "aggregation"], "is not NAME=VALUE"),
])
def test_bad_input_gives_a_clear_error(cub_root, tiny_model, extra, message):
    res = runner.invoke(app, ["classify", "-d", "cub", "--dataset-root", str(cub_root), *_model_args(tiny_model),
                              *extra])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_mismatched_descriptor_file_lists_the_classes(cub_root, tiny_model, tmp_path):
    f = tmp_path / "desc.json"
    f.write_text(json.dumps({"Black-footed Albatros": ["white"], "Penguin": ["black"]}))
    res = runner.invoke(app, ["classify", "-d", "cub", "--dataset-root", str(cub_root), "-m", "descriptions",
                              "-p", f"descriptors={f}", *_model_args(tiny_model)])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "closest in file: 'black footed albatros'" in text and "'Penguin' matches no class" in text


def test_missing_weights_and_missing_dataset(tmp_path, no_network):
    res = runner.invoke(app, ["classify", "-d", "folder", "--dataset-root", str(tmp_path / "none")])
    assert res.exit_code == 2 and str(tmp_path / "none") in " ".join(res.output.split())
    root = make_cub_folder(tmp_path / "c", n_classes=2, images_per_class=2)
    res = runner.invoke(app, ["classify", "-d", "cub", "--dataset-root", str(root), "--model", "ViT-B-32",
                              "--pretrained", "openai", "--device", "cpu"])
    assert res.exit_code == 2 and "zsclip models download ViT-B-32 openai" in " ".join(res.output.split())


def test_datasets_download_from_a_loopback_mirror(tmp_path, monkeypatch):
    """`zsclip datasets download cub --url` against a local HTTP server: unpack, then use the folder."""
    src = make_cub_folder(tmp_path / "src", n_classes=2, images_per_class=2).parent
    served = tmp_path / "served"
    served.mkdir()
    archive = make_tarball(src, served / "CUB_200_2011.tgz", top_level=False)
    cards = tmp_path / "cards"
    cards.mkdir()
    card = json.loads((resource_dir("datasets") / "cub.json").read_text())
    card["download"]["md5"] = hashlib.md5(archive.read_bytes()).hexdigest()
    (cards / "cub.json").write_text(json.dumps(card))
    monkeypatch.setattr("zsclip.datasets.download.resource_dir", lambda name: cards)
    with serve_directory(served) as base:
        res = runner.invoke(app, ["datasets", "download", "cub", "--root", str(tmp_path / "data"),
                                  "--url", f"{base}/CUB_200_2011.tgz"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "data" / "CUB_200_2011" / "images.txt").is_file()
    info = runner.invoke(app, ["datasets", "info", "-d", "cub", "--dataset-root", str(tmp_path / "data")])
    assert json.loads(info.output)["num_classes"] == 2

    card["download"]["md5"] = "0" * 32
    (cards / "cub.json").write_text(json.dumps(card))
    with serve_directory(served) as base:
        bad = runner.invoke(app, ["datasets", "download", "cub", "--root", str(tmp_path / "other"),
                                  "--url", f"{base}/CUB_200_2011.tgz"])
    assert bad.exit_code == 2 and "checksum" in bad.output.lower()
    assert not (tmp_path / "other" / "CUB_200_2011").exists()


def test_errors_name_the_cli_flag_on_the_command_line_and_the_argument_in_python():
    from zsclip.datasets import get_dataset
    from zsclip.errors import DatasetError

    res = runner.invoke(app, ["classify", "-d", "folder"])
    assert res.exit_code == 2 and "pass --dataset-root DIR" in res.output
    with pytest.raises(DatasetError, match=r"pass root=DIR$"):
        get_dataset("folder")
