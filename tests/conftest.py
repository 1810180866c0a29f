"""Shared test fixtures: an isolated cache root and a tiny random open_clip model saved three ways.

No network and no real weights: the tiny architecture is registered with open_clip at test time, given
random weights once per session, and saved as a checkpoint file, a ``local-dir:`` folder and a Hugging
Face cache entry, so every loading path of ``zsclip.models`` runs for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = "zsclip-tiny-test"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own ZSCLIP_HOME and an offline, empty Hugging Face cache."""
    home = tmp_path_factory.mktemp("zsclip-home")
    monkeypatch.setenv("ZSCLIP_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-empty"))
    monkeypatch.setenv("ZSCLIP_PROGRESS", "0")
    return home


def _is_loopback(host: object) -> bool:
    import ipaddress

    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Explicitly offline, for tests that name hub models: the Hugging Face client is told so, and every name
    lookup or connection to a host other than loopback is refused and recorded; the test fails at teardown if
    there was any (a library that catches the refusal cannot hide the attempt)."""
    import socket

    attempts: list[object] = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, \
        socket.getaddrinfo

    def refuse(address: object) -> None:
        attempts.append(address)
        raise OSError(f"the test tried to reach {address!r}: tests must not use the network")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host.decode() if isinstance(host, bytes) else host):
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"the test tried to use the network: {attempts}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model's checkpoint file, local-dir folder and HF cache root (with repo ``zsclip/tiny``)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny-model")
    cfg_dir = root / "configs"
    cfg_dir.mkdir()
    (cfg_dir / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    ckpt = root / "tiny.safetensors"
    save_file(state, str(ckpt))

    local = root / "local"
    local.mkdir()
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": {"image_size": 32, "mean": [0.5, 0.5, 0.5],
                                                        "std": [0.5, 0.5, 0.5]}}
    (local / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state, str(local / "open_clip_model.safetensors"))

    hf = root / "hf"
    snap = hf / "models--zsclip--tiny" / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    (snap / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state, str(snap / "open_clip_model.safetensors"))
    refs = hf / "models--zsclip--tiny" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123456789abcdef")
    return {"name": TINY, "checkpoint": ckpt, "local_dir": local, "hf_cache": hf}


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The tiny model loaded once per session from its checkpoint file."""
    import os

    from zsclip.models import load_model

    os.environ.setdefault("ZSCLIP_HOME", str(tmp_path_factory.mktemp("session-home")))
    return load_model(TINY, str(tiny_model["checkpoint"]), device="cpu")


@pytest.fixture()
def shared_notebook_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One cache root for the notebook tests (their kernels inherit it), so the toy world's test store is
    rendered once for all notebooks."""
    home = Path(str(tmp_path_factory.getbasetemp())) / "notebook-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("ZSCLIP_HOME", str(home))
    return home
