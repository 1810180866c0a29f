"""Dataset loaders, attribute descriptors, downloads and safe extraction, on generated files only."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    CUB_ATTRIBUTE_NAMES,
    make_cub_folder,
    make_folder_dataset,
    make_malicious_tarball,
    make_tarball,
    serve_directory,
)

from zsclip.datasets import (
    CubDataset,
    ImageFolderDataset,
    cub_attribute_phrase,
    cub_classname,
    download_dataset,
    download_file,
    extract_archive,
    get_dataset,
    list_datasets,
)
from zsclip.errors import DatasetError


def which_phrase(descriptor: str) -> str:
    """METHODS §1: how a descriptor is joined to "{class}, ..."."""
    first = descriptor.split()[0]
    if first in ("a", "an"):
        return f"which is {descriptor}"
    if first in ("has", "often", "typically", "may", "can"):
        return f"which {descriptor}"
    if first == "used":
        return f"which is {descriptor}"
    return f"which has {descriptor}"


@pytest.fixture(scope="module")
def cub_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class CUB (6 images each, one corrupt) under a parent folder, shared read-only by tests."""
    parent = tmp_path_factory.mktemp("cub")
    make_cub_folder(parent)
    return parent


@pytest.fixture
def cub_copy(cub_parent: Path, tmp_path: Path) -> Path:
    """A private copy of the generated CUB (its CUB_200_2011 folder), for tests that damage files."""
    shutil.copytree(cub_parent, tmp_path / "copy")
    return tmp_path / "copy" / "CUB_200_2011"


# -- CUB -------------------------------------------------------------------------------------------------


def test_registry_lists_cub_and_folder() -> None:
    names = [name for name, _ in list_datasets()]
    assert "cub" in names and "folder" in names


def test_cub_reads_names_splits_and_labels(cub_parent: Path) -> None:
    for root in (cub_parent, cub_parent / "CUB_200_2011"):
        ds = get_dataset("cub", root=root)
        assert isinstance(ds, CubDataset)
        assert ds.root == (cub_parent / "CUB_200_2011").resolve()
        assert ds.classnames == [
            "Black-footed Albatross",
            "Laysan Albatross",
            "Sooty Albatross",
            "Groove-billed Ani",
            "Crested Auklet",
        ]
        assert ds.splits == ("train", "val", "test", "trainval") and ds.default_split == "test"
        train, val, test = ds.samples("train"), ds.samples("val"), ds.samples("test")
        assert len(test) == 15 and len(ds.samples("trainval")) == 15
        assert [s.label for s in test] == [c for c in range(5) for _ in range(3)]
        for sample in train + test:
            assert Path(sample.path).is_absolute() and Path(sample.path).exists()
            assert Path(sample.path).parent.name.startswith(f"{sample.label + 1:03d}.")
        ids = [int(Path(s.path).stem.rsplit("_", 1)[1]) for s in test]
        assert ids == sorted(ids)
        assert ds.describe()["splits"] == {"train": 10, "val": 5, "test": 15, "trainval": 15}
        assert sorted(s.path for s in train + val) == sorted(s.path for s in ds.samples("trainval"))
        assert [s.label for s in val] == [0, 1, 2, 3, 4]  # round(10% of 3) → at least 1 per class
        assert ds.role_splits() == {"fit": "train", "choose": "val", "eval": "test"}


def test_cub_validation_split_is_carved_per_class_with_a_seed(tmp_path: Path) -> None:
    from fixtures_data import make_cub_folder

    root = make_cub_folder(tmp_path, n_classes=3, images_per_class=40, corrupt=0)
    a, b = get_dataset("cub", root), get_dataset("cub", root)
    assert [s.path for s in a.samples("val")] == [s.path for s in b.samples("val")]  # stable across loads
    assert np.bincount([s.label for s in a.samples("val")]).tolist() == [2, 2, 2]  # round(0.1 × 20)
    other = get_dataset("cub", root, split_seed=1)
    assert [s.path for s in other.samples("val")] != [s.path for s in a.samples("val")]
    assert not {s.path for s in a.samples("val")} & {s.path for s in a.samples("train")}
    half = get_dataset("cub", root, val_fraction=0.5)
    assert len(half.samples("val")) == 30 and half.describe()["val_fraction"] == 0.5
    assert a.split_fingerprint("val") != other.split_fingerprint("val")


def test_cub_corrupt_image_is_listed_but_unreadable(cub_parent: Path) -> None:
    ds = get_dataset("cub", root=cub_parent)
    readable = 0
    for sample in ds.samples("test"):
        try:
            assert ds.load_image(sample).size == (32, 32)
            readable += 1
        except OSError:
            pass
    assert readable == 14


def test_cub_classname_rule_and_card_overrides(tmp_path: Path) -> None:
    assert cub_classname("001.Black_footed_Albatross") == "Black-footed Albatross"
    assert cub_classname("009.Brewer_Blackbird") == "Brewer Blackbird"
    assert cub_classname("017.Cardinal") == "Cardinal"
    assert cub_classname("020.Yellow_breasted_Chat") == "Yellow-breasted Chat"
    ds = CubDataset(root=make_cub_folder(tmp_path, n_classes=22, images_per_class=2, attributes=False))
    assert ds.classnames[21] == "Chuck-will's-widow"
    assert ds.card["download"]["md5"] == "97eceeb196236b17998738112f37df78"


def test_cub_attribute_descriptors(cub_parent: Path) -> None:
    ds = get_dataset("cub", root=cub_parent)
    descriptors = ds.attribute_descriptors()
    assert list(descriptors) == ds.classnames
    assert descriptors["Black-footed Albatross"] == ["has a dagger-shaped bill"]
    assert descriptors["Sooty Albatross"] == ["blue wings"]
    assert descriptors["Crested Auklet"] == ["has a striped breast"]
    everything = ds.attribute_descriptors(threshold=0.0)
    assert all(len(d) == 15 for d in everything.values())
    assert everything["Laysan Albatross"][0] == "has a cone-shaped bill"  # highest percentage first
    texts = {f"Groove-billed Ani, {which_phrase(d)}." for d in everything["Groove-billed Ani"]}
    assert "Groove-billed Ani, which has black wings." in texts
    assert "Groove-billed Ani, which is a duck-like bird." in texts
    assert "Groove-billed Ani, which has a bill longer than its head." in texts
    assert "Groove-billed Ani, which is a large bird, 16 to 32 inches long." in texts
    assert "Groove-billed Ani, which has mostly white plumage." in texts


def test_cub_attribute_names_found_in_every_documented_place(cub_copy: Path) -> None:
    beside = cub_copy.parent / "attributes.txt"
    (cub_copy / "attributes" / "attributes.txt").write_bytes(beside.read_bytes())
    beside.unlink()
    assert CubDataset(root=cub_copy).attribute_descriptors()["Black-footed Albatross"]
    (cub_copy / "attributes" / "attributes.txt").rename(cub_copy / "attributes.txt")
    assert CubDataset(root=cub_copy).attribute_descriptors()["Black-footed Albatross"]
    (cub_copy / "attributes.txt").unlink()
    with pytest.raises(DatasetError, match="attributes.txt"):
        CubDataset(root=cub_copy).attribute_descriptors()


def test_cub_missing_attribute_percentages(cub_copy: Path) -> None:
    (cub_copy / "attributes" / "class_attribute_labels_continuous.txt").unlink()
    with pytest.raises(DatasetError, match="class_attribute_labels_continuous.txt"):
        CubDataset(root=cub_copy).attribute_descriptors()


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("has_bill_shape::dagger", "has a dagger-shaped bill"),
        ("has_bill_shape::all-purpose", "has an all-purpose bill"),
        ("has_wing_color::blue", "blue wings"),
        ("has_back_color::olive", "has an olive back"),
        ("has_breast_pattern::striped", "has a striped breast"),
        ("has_tail_shape::forked_tail", "has a forked tail"),
        ("has_tail_shape::fan-shaped_tail", "has a fan-shaped tail"),
        ("has_bill_length::longer_than_head", "has a bill longer than its head"),
        ("has_size::large_(16_-_32_in)", "a large bird, 16 to 32 inches long"),
        ("has_size::very_small_(3_-_5_in)", "a very small bird, 3 to 5 inches long"),
        ("has_size::medium_(9_-_16_in)", "a medium-sized bird, 9 to 16 inches long"),
        ("has_shape::duck-like", "a duck-like bird"),
        ("has_shape::upright-perching_water-like", "an upright-perching water bird"),
        ("has_primary_color::blue", "mostly blue plumage"),
        ("has_wing_shape::pointed-wings", "pointed wings"),
        ("has_under_tail_color::white", "has a white undertail"),
        ("has_wing_pattern::solid", "solid-colored wings"),
        ("has_head_pattern::eyering", "has a ring around its eye"),
        ("has_eye_color::red", "red eyes"),
    ],
)
def test_cub_attribute_phrases(name: str, phrase: str) -> None:
    assert cub_attribute_phrase(name) == phrase


def test_every_cub_attribute_reads_as_english() -> None:
    assert len(CUB_ATTRIBUTE_NAMES) == 312
    phrases = [cub_attribute_phrase(name) for name in CUB_ATTRIBUTE_NAMES]
    assert len(set(phrases)) == 312
    groups = {name.split("::")[0] for name in CUB_ATTRIBUTE_NAMES}
    assert len(groups) == 28
    for phrase in phrases:
        assert not any(ch in phrase for ch in "_:()"), phrase
        assert " a a" not in phrase and " a o" not in phrase and " a i" not in phrase, phrase
        first = phrase.split()[0]
        if first in ("a", "an"):
            assert phrase.split()[-1] in ("bird", "long"), phrase  # "which is a ... bird"
    with pytest.raises(DatasetError, match="has_beak_style"):
        cub_attribute_phrase("has_beak_style::pointy")


def test_cub_missing_root_says_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="zsclip datasets download cub"):
        get_dataset("cub", root=tmp_path)


@pytest.mark.parametrize(
    ("filename", "damage", "match"),
    [
        ("images.txt", lambda lines: lines[:2] + ["three 003.x/y.jpg"] + lines[3:], r"images.txt, line 3"),
        ("images.txt", lambda lines: lines + [lines[0]], r"images.txt, line 31: image id 1 appears twice"),
        ("classes.txt", lambda lines: lines[:1] + lines[2:], r"classes.txt: class ids must run 1..4"),
        (
            "image_class_labels.txt",
            lambda lines: lines[:-1],
            r"image_class_labels.txt has no line for image 30",
        ),
        ("image_class_labels.txt", lambda lines: ["1 9"] + lines[1:], r"image_class_labels.txt: image 1"),
        ("train_test_split.txt", lambda lines: ["1 2"] + lines[1:], r"train_test_split.txt: image 1"),
        ("train_test_split.txt", lambda lines: ["1"] + lines[1:], r"train_test_split.txt, line 1"),
    ],
)
def test_cub_damaged_annotation_files(cub_copy: Path, filename: str, damage, match: str) -> None:
    path = cub_copy / filename
    path.write_text("\n".join(damage(path.read_text().splitlines())) + "\n")
    with pytest.raises(DatasetError, match=match) as info:
        CubDataset(root=cub_copy)
    assert "zsclip datasets download cub" in str(info.value)


def test_cub_missing_annotation_file(cub_copy: Path) -> None:
    (cub_copy / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match="annotation file missing: .*train_test_split.txt"):
        CubDataset(root=cub_copy)


@pytest.mark.parametrize("bad_path", ["/etc/hostname", "../../outside.jpg", "001.x/../../../outside.jpg",
                                      "C:/Windows/x.jpg"])
def test_cub_image_paths_that_leave_the_root_are_refused(cub_copy: Path, bad_path: str) -> None:
    path = cub_copy / "images.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([f"1 {bad_path}", *lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match="image 1 has the path .* leaves the dataset's images/ folder"):
        CubDataset(root=cub_copy)


def test_cub_annotation_file_that_is_not_utf8(cub_copy: Path) -> None:
    path = cub_copy / "classes.txt"
    path.write_bytes(path.read_bytes() + "5 005.Mésange\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="classes.txt is not UTF-8"):
        CubDataset(root=cub_copy)


@pytest.mark.parametrize("url", ["notaurl", "htp//x", "javascript:alert(1)"])
def test_download_file_refuses_what_is_not_an_address(tmp_path: Path, url: str) -> None:
    with pytest.raises(DatasetError, match="is not a download address"):
        download_file(url, tmp_path / "x.tgz")
    assert list(tmp_path.iterdir()) == []


def test_cub_damaged_attribute_percentages(cub_copy: Path) -> None:
    path = cub_copy / "attributes" / "class_attribute_labels_continuous.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + ["1 2 3"] + lines[2:]) + "\n")
    with pytest.raises(DatasetError, match=r"class_attribute_labels_continuous.txt, line 2: expected 15"):
        CubDataset(root=cub_copy).attribute_descriptors()


# -- image folders ---------------------------------------------------------------------------------------


def test_folder_with_split_folders(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "animals", splits=True)
    shutil.rmtree(root / "test" / "002.grey_wolf")
    (root / "train" / "004.snow_owl").mkdir()
    (root / "train" / "004.snow_owl" / "A.JPEG").write_bytes(
        (root / "train" / "001.red_fox" / "img_000.jpg").read_bytes()
    )
    ds = get_dataset("folder", root=root)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classnames == ["red fox", "grey wolf", "brown bear", "snow owl"]
    assert ds.splits == ("train", "test") and ds.default_split == "test"
    train = ds.samples("train")
    assert [Path(s.path).name for s in train[:3]] == ["img_000.jpg", "img_001.PNG", "img_002.jpg"]
    assert [s.label for s in train] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert [s.label for s in ds.samples("test")] == [0, 0, 0, 2, 2, 2]
    assert all(Path(s.path).is_absolute() for s in train)
    assert ds.load_image(train[1]).mode == "RGB"


def test_folder_without_split_folders(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "flat", classes=("cat", "hot_dog"), per_class=2, splits=False)
    ds = get_dataset("folder", root=root)
    assert ds.splits == ("all",) and ds.default_split == "all"
    assert ds.classnames == ["cat", "hot dog"]
    assert [s.label for s in ds.samples("all")] == [0, 0, 1, 1]
    with pytest.raises(DatasetError, match="no split 'test'"):
        ds.samples("test")


def test_folder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="pass root=DIR"):
        get_dataset("folder")
    with pytest.raises(DatasetError, match=f"no class folders in {tmp_path}"):
        get_dataset("folder", root=tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=f"no images in {tmp_path}"):
        get_dataset("folder", root=tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        get_dataset("folder", root=tmp_path / "missing")


# -- downloads and extraction ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_cub(cub_parent: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The generated CUB packed as the official archive is (CUB_200_2011/ + attributes.txt): (dir, md5)."""
    served = tmp_path_factory.mktemp("served")
    archive = make_tarball(cub_parent, served / "CUB_200_2011.tgz", top_level=False)
    return served, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_file_checks_the_checksum(served_cub: tuple[Path, str], tmp_path: Path) -> None:
    served, md5 = served_cub
    expected = (served / "CUB_200_2011.tgz").read_bytes()
    with serve_directory(served) as base:
        got = download_file(f"{base}/CUB_200_2011.tgz", tmp_path / "a.tgz", md5=md5,
                            sha256=hashlib.sha256(expected).hexdigest())  # fmt: skip
        assert got.read_bytes() == expected
        with pytest.raises(DatasetError, match=f"expected {'0' * 32}, got {md5}"):
            download_file(f"{base}/CUB_200_2011.tgz", tmp_path / "b.tgz", md5="0" * 32)
        with pytest.raises(DatasetError, match="could not download"):
            download_file(f"{base}/missing.tgz", tmp_path / "c.tgz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]


def test_download_file_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound but not listening for the whole test: refused, and no one else can take it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(DatasetError, match=f"could not download http://127.0.0.1:{port}/x.tgz"):
            download_file(f"http://127.0.0.1:{port}/x.tgz", tmp_path / "x.tgz")
    assert list(tmp_path.iterdir()) == []


def test_download_dataset_end_to_end(
    served_cub: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, md5 = served_cub
    cards = tmp_path / "cards"
    cards.mkdir()
    card = json.loads((Path(__file__).parents[1] / "datasets" / "cub.json").read_text())
    card["download"] = {"url": "http://127.0.0.1:9/unused.tgz", "md5": md5, "extracts_to": "CUB_200_2011"}
    (cards / "cub.json").write_text(json.dumps(card))
    monkeypatch.setattr("zsclip.datasets.download.resource_dir", lambda name: cards)
    monkeypatch.setenv("ZSCLIP_HOME", str(tmp_path / "home"))
    with serve_directory(served) as base:
        root = download_dataset("cub", url=f"{base}/CUB_200_2011.tgz")
    assert root == tmp_path / "home" / "datasets" / "CUB_200_2011"
    assert sorted(p.name for p in root.parent.iterdir()) == ["CUB_200_2011", "attributes.txt"]
    assert download_dataset("cub") == root  # already there: no server needed
    downloaded = get_dataset("cub", root=root)
    assert len(downloaded.samples("test")) == 15
    assert downloaded.attribute_descriptors()["Black-footed Albatross"] == ["has a dagger-shaped bill"]
    card["download"]["md5"] = "0" * 32
    (cards / "cub.json").write_text(json.dumps(card))
    with serve_directory(served) as base, pytest.raises(DatasetError, match="checksum mismatch"):
        download_dataset("cub", root=tmp_path / "other", url=f"{base}/CUB_200_2011.tgz")
    assert list((tmp_path / "other").iterdir()) == []


def test_extract_archive_tar_and_zip(cub_parent: Path, tmp_path: Path) -> None:
    created = extract_archive(make_tarball(cub_parent, tmp_path / "cub.tar.gz"), tmp_path / "out")
    assert created == [tmp_path / "out" / cub_parent.name]
    assert (created[0] / "attributes.txt").is_file()
    (created[0] / "attributes.txt").write_text("stale")
    assert extract_archive(tmp_path / "cub.tar.gz", tmp_path / "out") == created  # replaces, no leftovers
    assert (created[0] / "attributes.txt").read_text().startswith("1 has_bill_shape::dagger")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [cub_parent.name]
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("pack/one.txt", "1")
    assert extract_archive(tmp_path / "a.zip", tmp_path / "zout") == [tmp_path / "zout" / "pack"]
    assert sorted(p.name for p in (tmp_path / "zout").iterdir()) == ["pack"]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_extract_archive_refuses_escapes(tmp_path: Path, kind: str) -> None:
    outer = tmp_path / "outer"
    dest = outer / "dest"
    dest.mkdir(parents=True)
    archive = make_malicious_tarball(tmp_path / "bad.tgz", kind=kind)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(DatasetError, match=r"refusing to extract .*bad.tgz: .*member 'data/|has an absolute"):
        extract_archive(archive, dest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert list(dest.iterdir()) == []


def test_extract_zip_refuses_escape(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(DatasetError, match="'../escaped.txt'"):
        extract_archive(tmp_path / "bad.zip", tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()
    assert list((tmp_path / "dest").iterdir()) == []
