"""Class heads (save/load, checks, WiSE-FT, the linear probe) and the run context's roles and few-shot draws."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_data import make_cub_folder

from zsclip.context import RunContext, SplitRoleError, few_shot_rows
from zsclip.datasets import get_dataset
from zsclip.errors import ZsclipError
from zsclip.heads import ClassHead, train_linear_probe, wise_ft


def _head(seed=0, bias=False):
    rng = np.random.default_rng(seed)
    return ClassHead(rng.normal(size=(3, 4)), ("a", "b", "c"), rng.normal(size=3) if bias else None,
                     {"kind": "test", "seed": seed})


def test_head_scores_are_one_product_plus_bias():
    head = _head(bias=True)
    v = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float16)
    expected = v.astype(np.float32) @ head.weights.T + head.bias
    np.testing.assert_allclose(head.scores(v, chunk_size=3), expected, rtol=1e-5)
    with pytest.raises(ZsclipError, match="do not match the head's dimension 4"):
        head.scores(np.zeros((2, 5)))


def test_head_save_load_round_trip_and_damage_is_detected(tmp_path):
    head = _head(bias=True)
    meta = head.save(tmp_path / "h")
    back = ClassHead.load(meta)
    np.testing.assert_array_equal(back.weights, head.weights)
    np.testing.assert_array_equal(back.bias, head.bias)
    assert back.classnames == head.classnames and back.provenance == {"kind": "test", "seed": 0}
    tensors = tmp_path / "h.safetensors"
    _head(seed=1, bias=True).save(tmp_path / "other")
    (tmp_path / "other.safetensors").replace(tensors)  # weights of another head beside this JSON
    with pytest.raises(ZsclipError, match="checksum"):
        ClassHead.load(tmp_path / "h.json")
    tensors.write_bytes(b"\x00" * 10)
    with pytest.raises(ZsclipError, match="cannot be read"):
        ClassHead.load(tmp_path / "h")


def test_heads_refuse_bad_shapes():
    with pytest.raises(ZsclipError, match="one row per class name"):
        ClassHead(np.zeros((2, 4)), ("a", "b", "c"))
    with pytest.raises(ZsclipError, match="finite"):
        ClassHead(np.full((1, 2), np.nan), ("a",))


def test_wise_ft_mixes_without_renormalising():
    zs, learned = _head(0), _head(1)
    mixed = wise_ft(zs, learned, 0.5)
    np.testing.assert_allclose(mixed.weights, 0.5 * zs.weights + 0.5 * learned.weights)
    np.testing.assert_allclose(wise_ft(zs, learned, 0.0).weights, zs.weights)
    np.testing.assert_allclose(wise_ft(zs, learned, 0.25).weights, 0.25 * learned.weights + 0.75 * zs.weights)
    assert mixed.provenance["wise_ft"]["alpha"] == 0.5
    with pytest.raises(ZsclipError, match="alpha"):
        wise_ft(zs, learned, 1.5)
    with pytest.raises(ZsclipError, match="same classes"):
        wise_ft(zs, ClassHead(np.zeros((3, 4)), ("x", "b", "c")))


@pytest.mark.parametrize("zs_bias, learned_bias", [(False, True), (True, False), (True, True), (False, False)])
def test_wise_ft_mixes_the_biases_a_missing_one_counting_as_zero(zs_bias, learned_bias):
    """A zero-shot head has no bias and a linear probe has one: the mix's bias is alpha · b_learned + (1 − alpha) ·
    b_zero_shot with a missing bias as 0, and the mixed head scores as the same mix of the two heads' scores."""
    zs, learned = _head(0, bias=zs_bias), _head(1, bias=learned_bias)
    mixed = wise_ft(zs, learned, 0.25)
    zb = zs.bias if zs_bias else np.zeros(3)
    lb = learned.bias if learned_bias else np.zeros(3)
    if zs_bias or learned_bias:
        np.testing.assert_allclose(mixed.bias, 0.25 * lb + 0.75 * zb)
    else:
        assert mixed.bias is None
    v = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(mixed.scores(v), 0.25 * learned.scores(v) + 0.75 * zs.scores(v), rtol=1e-5, atol=1e-6)
    assert mixed.provenance["wise_ft"] == {"alpha": 0.25, "zero_shot": zs.provenance, "learned": learned.provenance}
    assert mixed.classnames == zs.classnames


def test_linear_probe_is_a_head_that_separates_its_training_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 3
    labels = np.repeat(np.arange(3), 20)
    x = centres[labels] + rng.normal(size=(60, 8))
    head = train_linear_probe(x, labels, ["a", "b", "c"])
    assert head.bias is not None and (head.predict(x) == labels).mean() > 0.95
    with pytest.raises(ZsclipError, match="every class"):
        train_linear_probe(x[:40], labels[:40], ["a", "b", "c"])


def test_few_shot_rows_draw_per_class_with_a_seed():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 4)
    rows = few_shot_rows(labels, 3, seed=1)
    assert np.bincount(labels[rows]).tolist() == [3, 2, 3]  # a class with fewer keeps all of its images
    assert rows.tolist() == sorted(rows.tolist())
    assert few_shot_rows(labels, 3, seed=1).tolist() == rows.tolist()
    assert any(few_shot_rows(labels, 3, seed=s).tolist() != rows.tolist() for s in range(2, 8))
    none = few_shot_rows(np.zeros(0, dtype=np.int64), 3, seed=1)
    assert none.shape == (0,) and none.dtype == np.int64  # usable as an index of no rows


def test_context_hands_out_stores_by_role(tmp_path, tiny_encoder):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=3, images_per_class=8))
    ctx = RunContext(ds, tiny_encoder, shots=1, shot_seed=0)
    fit = ctx.features("fit")
    assert fit.split == "train" and np.bincount(fit.labels).tolist() == [1, 1, 1]
    full = ctx.store("fit")
    np.testing.assert_array_equal(fit.embeddings, np.asarray(full.embeddings, dtype=np.float32)[fit.rows])
    assert ctx.features("choose").split == "val"
    with pytest.raises(SplitRoleError, match="cannot be read while fitting"):
        ctx.features("eval")
    with ctx.evaluating():
        assert ctx.features("eval").split == "test"
    assert ctx.phase == "fit" and set(ctx.encoded) == {"train", "val", "test"}
    assert ctx.store("fit") is full  # built once, shared
    with pytest.raises(ZsclipError, match="unknown role"):
        ctx.store("test")
    with pytest.raises(ZsclipError, match="shots must be"):
        RunContext(ds, tiny_encoder, shots=0)


@pytest.mark.parametrize("given", ["h", "h.json", "h.safetensors"])
def test_head_files_are_named_from_the_stem_whichever_file_is_given(tmp_path, given):
    """``save``/``load`` accept either file's path or the shared stem; the pair is always ``h.json`` +
    ``h.safetensors`` (never ``h.json.json``), and the JSON says what the head is."""
    head = _head(bias=True)
    assert head.save(tmp_path / given) == tmp_path / "h.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "h.safetensors"]
    import json

    meta = json.loads((tmp_path / "h.json").read_text())
    assert meta["format"] == 1 and meta["classnames"] == ["a", "b", "c"] and meta["shape"] == [3, 4]
    assert meta["has_bias"] is True and meta["provenance"] == {"kind": "test", "seed": 0}
    back = ClassHead.load(tmp_path / given)
    np.testing.assert_array_equal(back.scores(np.eye(4)), head.scores(np.eye(4)))


def test_a_head_without_bias_round_trips_without_one(tmp_path):
    head = _head()
    head.save(tmp_path / "h")
    import json

    assert json.loads((tmp_path / "h.json").read_text())["has_bias"] is False
    back = ClassHead.load(tmp_path / "h")
    assert back.bias is None
    np.testing.assert_array_equal(back.weights, head.weights)


def test_a_changed_bias_or_a_missing_tensor_file_is_reported(tmp_path):
    """The checksum covers the bias: a tensor file whose weights match but whose bias was changed is refused,
    and a missing tensor file is named."""
    from safetensors.numpy import save_file

    head = _head(bias=True)
    head.save(tmp_path / "h")
    save_file({"weights": head.weights, "bias": head.bias + 1}, str(tmp_path / "h.safetensors"))
    with pytest.raises(ZsclipError, match="checksum"):
        ClassHead.load(tmp_path / "h")
    save_file({"weights": head.weights}, str(tmp_path / "h.safetensors"))  # the bias dropped
    with pytest.raises(ZsclipError, match="checksum"):
        ClassHead.load(tmp_path / "h")
    (tmp_path / "h.safetensors").unlink()
    with pytest.raises(ZsclipError, match=r"weights missing: .*h\.safetensors"):
        ClassHead.load(tmp_path / "h.json")
    with pytest.raises(ZsclipError, match=r"class head description not found: .*nothing\.json"):
        ClassHead.load(tmp_path / "nothing")


def test_heads_store_float32_and_check_the_bias_length():
    head = ClassHead(np.ones((2, 3), dtype=np.float64), ["a", "b"], np.array([[1.0], [2.0]]))
    assert head.weights.dtype == np.float32 and head.weights.flags.c_contiguous
    assert head.bias.dtype == np.float32 and head.bias.shape == (2,)
    assert head.classnames == ("a", "b") and head.dim == 3
    np.testing.assert_array_equal(head.predict(np.array([[0.0, 0, 0]])), [1])
    with pytest.raises(ZsclipError, match="bias needs 2 values"):
        ClassHead(np.ones((2, 3)), ("a", "b"), np.ones(3))
    with pytest.raises(ZsclipError, match="one row per class name"):
        ClassHead(np.ones(3), ("a", "b", "c"))
    with pytest.raises(ZsclipError, match="finite"):
        ClassHead(np.array([[0.0, np.inf]]), ("a",))


def test_wise_ft_alpha_bounds_are_inclusive_and_the_mix_is_a_head_of_the_same_classes():
    zs, learned = _head(0), _head(1)
    np.testing.assert_allclose(wise_ft(zs, learned, 1.0).weights, learned.weights)
    np.testing.assert_allclose(wise_ft(zs, learned).weights, 0.5 * (zs.weights + learned.weights))
    with pytest.raises(ZsclipError, match="alpha"):
        wise_ft(zs, learned, -0.01)
    with pytest.raises(ZsclipError, match="same classes"):
        wise_ft(zs, ClassHead(np.zeros((3, 5)), ("a", "b", "c")))


def test_linear_probe_records_its_strength_and_uses_it():
    """``c`` is the inverse L2 strength the provenance records: a small ``c`` shrinks the weights."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(3, 6))[labels] * 2 + rng.normal(size=(30, 6))
    strong = train_linear_probe(x, labels, ["a", "b", "c"])
    weak = train_linear_probe(x, labels, ["a", "b", "c"], c=0.01)
    assert strong.provenance == {"kind": "linear-probe", "C": 10.0, "train_images": 30}
    assert weak.provenance["C"] == 0.01
    assert np.abs(weak.weights).sum() < 0.5 * np.abs(strong.weights).sum()
    assert strong.classnames == ("a", "b", "c") and strong.bias.shape == (3,)


def test_context_without_an_encoder_or_a_split_says_what_is_missing(tmp_path):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=2, images_per_class=2))
    ctx = RunContext(ds)
    with pytest.raises(ZsclipError, match="has no encoder, so it cannot make image embeddings; pass encoder="):
        ctx.store("fit")
    with pytest.raises(ZsclipError, match="has no encoder, so it cannot make text embeddings"):
        ctx.text_cache  # noqa: B018
    ctx.roles.pop("choose")
    with pytest.raises(ZsclipError, match=r"dataset 'cub' has no split for the 'choose' role; its splits are train"):
        ctx.split_of("choose")
    with pytest.raises(ZsclipError, match="unknown role 'test'; roles are fit, choose, eval"):
        ctx.split_of("test")
    assert ctx.describe() == {"roles": {"fit": "train", "eval": "test"}, "shots": None, "shot_seed": None}
    assert RunContext(ds, shots=2, shot_seed=5).describe()["shot_seed"] == 5
    with pytest.raises(SplitRoleError, match=r"the 'fit' role's split 'train' is the split this run evaluates on"):
        RunContext(ds, eval_split="train").split_of("fit")


def test_evaluating_restores_the_fitting_phase_even_after_an_error(tmp_path, tiny_encoder):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=2, images_per_class=4))
    ctx = RunContext(ds, tiny_encoder)
    with pytest.raises(RuntimeError), ctx.evaluating() as same:
        assert same is ctx and ctx.phase == "eval"
        raise RuntimeError("boom")
    assert ctx.phase == "fit"
    with pytest.raises(SplitRoleError):
        ctx.features("eval")


def test_features_draw_shots_per_call_and_count_what_was_encoded(tmp_path, tiny_encoder):
    ds = get_dataset("cub", make_cub_folder(tmp_path, n_classes=3, images_per_class=8))
    ctx = RunContext(ds, tiny_encoder, store_options={"dtype": "float32"})
    full = ctx.features("fit")
    assert full.embeddings.dtype == np.float32 and full.rows.tolist() == list(range(len(full.labels)))
    two = ctx.features("fit", shots=2, seed=3)
    assert np.bincount(two.labels).tolist() == [2, 2, 2]
    assert two.rows.tolist() == few_shot_rows(full.labels, 2, 3).tolist()
    np.testing.assert_array_equal(two.embeddings, full.embeddings[two.rows])
    assert ctx.features("fit", shots=2, seed=3).rows.tolist() == two.rows.tolist()
    assert ctx.store("fit").manifest["dtype"] == "float32"  # the store options reach the build
    assert ctx.encoded == {"train": len(full.labels)} and ctx.skipped == {"train": 0}
    again = RunContext(ds, tiny_encoder, store_options={"dtype": "float32"})
    again.features("fit")
    assert again.encoded == {"train": 0}  # the store was reused: nothing encoded this run
    at = RunContext(ds, tiny_encoder, eval_store_path=tmp_path / "my-test-store")
    with at.evaluating():
        assert at.store("eval").path == tmp_path / "my-test-store"  # --store names the eval split's store
    assert (tmp_path / "my-test-store" / "manifest.json").is_file()
