"""Where descriptions come from and the pool of all classes' descriptions (``zsclip.methods.pool``): the
sources a ``descriptors=`` parameter accepts, the clean-up, and the two pool orders DDS's fallback depends on."""

from __future__ import annotations

import json

import pytest
from fixtures_data import make_cub_folder, make_folder_dataset

from zsclip.datasets import get_dataset
from zsclip.errors import ZsclipError
from zsclip.methods.pool import DescriptionPool, clean, resolve_descriptors
from zsclip.paths import resource_dir


def test_clean_normalises_drops_empty_and_keeps_the_first_of_duplicates():
    assert clean(["- red crest.", "It has a short beak", "", "  ", "red crest", "* Long tail"]) == [
        "red crest", "has a short beak", "Long tail"]


def test_the_pool_in_file_order_and_in_the_authors_sorted_order():
    per_class = [["zeta", "alpha", "- zeta"], ["beta", "alpha"], []]
    file = DescriptionPool.from_lists(per_class)
    assert file.texts == ("zeta", "alpha", "beta") and file.own == ((0, 1), (2, 1), ()) and file.order == "file"
    assert len(file) == 3 and file.per_class_texts == [["zeta", "alpha"], ["beta", "alpha"], []]
    assert file.own_in_pool_order(1) == [1, 2]
    by_sort = DescriptionPool.from_lists(per_class, "sorted")
    assert by_sort.texts == ("alpha", "zeta", "beta") and by_sort.own == ((1, 0), (2, 0), ())
    assert by_sort.order == "sorted" and by_sort.per_class_texts == file.per_class_texts  # own lists: file order
    with pytest.raises(ZsclipError, match="pool order must be 'file' or 'sorted', not 'random'"):
        DescriptionPool.from_lists(per_class, "random")


def test_descriptor_sources(tmp_path):
    ds = get_dataset("cub", make_cub_folder(tmp_path / "cub", n_classes=2, images_per_class=2))
    mapping = {name: [f"{name} wings"] for name in ds.classnames}
    assert resolve_descriptors(ds, mapping) == ([[f"{n} wings"] for n in ds.classnames], "mapping")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(mapping))
    assert resolve_descriptors(ds, str(path)) == ([[f"{n} wings"] for n in ds.classnames], str(path))
    per_class, source = resolve_descriptors(ds, "attributes", attribute_threshold=10)
    assert source == "attributes(threshold=10)" and len(per_class) == 2 and all(per_class)
    assert resolve_descriptors(ds, "attributes", 10)[0] == per_class
    assert resolve_descriptors(ds, None)[1] == "attributes(threshold=50)"  # CUB's card names no file
    with pytest.raises(ZsclipError, match=r"descriptors=.*nope\.json: no such file \(or use 'attributes'"):
        resolve_descriptors(ds, str(tmp_path / "nope.json"))
    # a mismatch names where the descriptors came from: the mapping, or the file
    partial = {ds.classnames[0]: ["wings"]}
    with pytest.raises(ZsclipError, match=r"^descriptor mapping does not match the dataset's 2 classes"):
        resolve_descriptors(ds, partial)
    path.write_text(json.dumps(partial))
    with pytest.raises(ZsclipError, match=f"^{path} does not match the dataset's 2 classes"):
        resolve_descriptors(ds, str(path))


def test_the_card_file_is_the_default_and_is_named_as_shipped():
    toy = get_dataset("toyworld")
    per_class, source = resolve_descriptors(toy, None)
    card = json.loads((resource_dir("prompts") / "toyworld" / "descriptors.json").read_text())
    assert source == "prompts/toyworld/descriptors.json" and len(per_class) == len(toy.classnames)
    assert per_class[0] == card[toy.classnames[0]]


def test_a_dataset_without_descriptors_or_attributes_is_an_error(tmp_path):
    ds = get_dataset("folder", make_folder_dataset(tmp_path / "animals"))
    with pytest.raises(ZsclipError):
        resolve_descriptors(ds, None)
