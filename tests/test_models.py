"""Model loading through every path (checkpoint file, local-dir, HF cache), fingerprints and clear errors."""

from __future__ import annotations

import logging
import os
import socket

import numpy as np
import pytest
from PIL import Image

from zsclip.errors import WeightsNotFoundError, ZsclipError
from zsclip.models import load_model, resolve_weights


def _encode(encoder, image: Image.Image, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pixels = encoder.preprocess(image).unsqueeze(0)
    return encoder.encode_images(pixels), encoder.encode_texts(texts)


def test_checkpoint_local_dir_and_hf_cache_load_the_same_weights(tiny_model, monkeypatch, no_network):
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


def test_fingerprint_follows_the_weights_not_the_file(tiny_model, tmp_path):
    """Same weights (another load, a copy elsewhere): same fingerprint, so caches are shared; one weight changed by
    1e-3: another fingerprint, so no cache made by the old weights is used."""
    import shutil

    from safetensors.torch import load_file, save_file

    a = load_model(tiny_model["name"], str(tiny_model["checkpoint"]), device="cpu")
    b = load_model(tiny_model["name"], str(tiny_model["checkpoint"]), device="cpu")
    assert a.fingerprint == b.fingerprint
    assert a.describe()["model"] == tiny_model["name"]
    copy = tmp_path / "elsewhere" / "copy.safetensors"
    copy.parent.mkdir()
    shutil.copy(tiny_model["checkpoint"], copy)
    assert load_model(tiny_model["name"], str(copy), device="cpu").fingerprint == a.fingerprint
    state = load_file(str(tiny_model["checkpoint"]))
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3
    changed = tmp_path / "changed.safetensors"
    save_file(state, str(changed))
    assert load_model(tiny_model["name"], str(changed), device="cpu").fingerprint != a.fingerprint


def test_missing_tag_weights_offline_says_where_and_how(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("ViT-B-32", "openai", device="cpu")
    msg = str(info.value)
    assert str(tmp_path / "empty-hf") in msg  # where it looked
    assert "zsclip models download ViT-B-32 openai" in msg  # how to get them
    assert "HF_HUB_OFFLINE" in msg


def test_missing_hf_hub_repo_offline(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="zsclip/absent"):
        resolve_weights("hf-hub:zsclip/absent")


def test_local_dir_without_weights_or_config(tmp_path, tiny_model):
    (tmp_path / "open_clip_config.json").write_text((tiny_model["local_dir"] / "open_clip_config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        resolve_weights(f"local-dir:{tmp_path}")
    with pytest.raises(WeightsNotFoundError, match="no open_clip_config.json"):
        resolve_weights(f"local-dir:{tmp_path / 'nowhere'}")


def test_bad_names_and_tags(no_network):
    with pytest.raises(ZsclipError, match="unknown model"):
        resolve_weights("Not-A-Model")
    with pytest.raises(ZsclipError, match="needs weights"):
        resolve_weights("ViT-B-32", None)
    with pytest.raises(ZsclipError, match="neither a file nor a known tag"):
        resolve_weights("ViT-B-32", "no-such-tag")


def test_truncated_texts_are_reported(tiny_encoder):
    long = "a bird " + "with many feathers " * 40
    assert tiny_encoder.truncated(["a short text", long]) == [long]


@pytest.fixture()
def refusing_endpoint(monkeypatch):
    """A hub endpoint on loopback that refuses connections (a bound socket that does not listen), downloads
    allowed, and a count of the TCP connections attempted."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ZSCLIP_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    attempts: list[tuple] = []
    real = socket.create_connection

    def counting(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    try:
        yield endpoint, attempts
    finally:
        sock.close()


@pytest.mark.parametrize("name, pretrained", [("ViT-B-32", "openai"), ("hf-hub:zsclip/absent", None)])
def test_an_unreachable_hub_is_one_connection_attempt_and_one_clear_error(refusing_endpoint, tmp_path, caplog,
                                                                          capfd, name, pretrained):
    endpoint, attempts = refusing_endpoint
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(name, pretrained)
    message = str(info.value)
    assert endpoint in message and "cannot be reached" in message
    assert str(tmp_path) in message or os.environ["HF_HUB_CACHE"] in message  # where it looked
    assert len(attempts) == 1  # one short connection check, no retries
    assert not [r for r in caplog.records if "retr" in r.getMessage().lower()]
    assert "retr" not in capfd.readouterr().err.lower()
    tried = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "zsclip.models"]
    assert len(tried) == 1 and endpoint in tried[0]  # one line says what is being tried


@pytest.fixture(scope="module")
def other_architecture_checkpoint(tmp_path_factory):
    """A checkpoint of a tiny architecture that differs from the test's (another embedding width)."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("other-arch")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8,
                                           "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (root / "zsclip-tiny-other.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root)
    torch.manual_seed(1)
    model = open_clip.create_model("zsclip-tiny-other")
    path = root / "other.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_a_checkpoint_of_another_architecture_is_one_clear_line(tiny_model, other_architecture_checkpoint):
    with pytest.raises(ZsclipError) as info:
        load_model(tiny_model["name"], str(other_architecture_checkpoint), device="cpu")
    message = str(info.value)
    assert str(other_architecture_checkpoint) in message and f"the {tiny_model['name']} architecture" in message
    assert "of other shapes" in message and "\n" not in message and len(message) < 800


def test_a_truncated_safetensors_file_is_named(tiny_model, tmp_path):
    data = tiny_model["checkpoint"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ZsclipError) as info:
        load_model(tiny_model["name"], str(cut), device="cpu")
    assert str(cut) in str(info.value) and "truncated or corrupt" in str(info.value)
