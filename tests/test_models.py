"""Model loading through every path (checkpoint file, local-dir, HF cache), fingerprints and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zsclip.errors import WeightsNotFoundError, ZsclipError
from zsclip.models import load_model, resolve_weights


def _encode(encoder, image: Image.Image, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pixels = encoder.preprocess(image).unsqueeze(0)
    return encoder.encode_images(pixels), encoder.encode_texts(texts)


def test_checkpoint_local_dir_and_hf_cache_load_the_same_weights(tiny_model, monkeypatch):
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    texts = ["a photo of a bird.", "a red crest"]
    from_file = load_model(tiny_model["name"], str(tiny_model["checkpoint"]), device="cpu")
    local = load_model(f"local-dir:{tiny_model['local_dir']}", device="cpu")
    monkeypatch.setenv("HF_HUB_CACHE", str(tiny_model["hf_cache"]))
    hub = load_model("hf-hub:zsclip/tiny", device="cpu")

    # same weights everywhere; the local folder declares its own preprocessing (mean/std 0.5)
    assert from_file.fingerprint_info["weights_sha256"] == local.fingerprint_info["weights_sha256"]
    assert local.fingerprint == hub.fingerprint
    assert from_file.fingerprint != local.fingerprint  # other preprocessing, other caches
    img_l, txt_l = _encode(local, image, texts)
    img_h, txt_h = _encode(hub, image, texts)
    np.testing.assert_allclose(img_l, img_h, atol=1e-6)
    np.testing.assert_allclose(txt_l, txt_h, atol=1e-6)
    _, txt_f = _encode(from_file, image, texts)
    np.testing.assert_allclose(txt_f, txt_l, atol=1e-6)  # the text tower does not depend on preprocessing
    np.testing.assert_allclose(np.linalg.norm(txt_f, axis=1), 1.0, atol=1e-5)


def test_fingerprint_is_stable_across_loads(tiny_model):
    a = load_model(tiny_model["name"], str(tiny_model["checkpoint"]), device="cpu")
    b = load_model(tiny_model["name"], str(tiny_model["checkpoint"]), device="cpu")
    assert a.fingerprint == b.fingerprint
    assert a.describe()["model"] == tiny_model["name"]


def test_missing_tag_weights_offline_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("ViT-B-32", "openai", device="cpu")
    msg = str(info.value)
    assert str(tmp_path / "empty-hf") in msg  # where it looked
    assert "zsclip models download ViT-B-32 openai" in msg  # how to get them
    assert "HF_HUB_OFFLINE" in msg


def test_missing_hf_hub_repo_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="zsclip/absent"):
        resolve_weights("hf-hub:zsclip/absent")


def test_local_dir_without_weights_or_config(tmp_path, tiny_model):
    (tmp_path / "open_clip_config.json").write_text((tiny_model["local_dir"] / "open_clip_config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        resolve_weights(f"local-dir:{tmp_path}")
    with pytest.raises(WeightsNotFoundError, match="no open_clip_config.json"):
        resolve_weights(f"local-dir:{tmp_path / 'nowhere'}")


def test_bad_names_and_tags():
    with pytest.raises(ZsclipError, match="unknown model"):
        resolve_weights("Not-A-Model")
    with pytest.raises(ZsclipError, match="needs weights"):
        resolve_weights("ViT-B-32", None)
    with pytest.raises(ZsclipError, match="neither a file nor a known tag"):
        resolve_weights("ViT-B-32", "no-such-tag")


def test_truncated_texts_are_reported(tiny_encoder):
    long = "a bird " + "with many feathers " * 40
    assert tiny_encoder.truncated(["a short text", long]) == [long]
