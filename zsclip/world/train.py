"""Contrastive training of the toy world's tiny CLIP, saved as an open_clip ``local-dir:`` model folder.

The model is an ordinary open_clip ``CLIP`` built from a small custom config (a 4-layer ViT on 64-pixel
images, a 3-layer text transformer with the standard open_clip tokenizer and a short context), trained
with ``open_clip.ClipLoss`` on the corpus from ``corpus.build_corpus``. Corpus images are rendered once
from their seeds into a uint8 array cached beside the corpus, then training reads batches from it.
Training is reproducible from the seed (same steps, same batches, same initialisation), logs progress,
checkpoints every ``checkpoint_every`` steps and resumes from the checkpoint after an interruption.
The result is written atomically as ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
``open_clip_model.safetensors`` (fp16), loadable with ``open_clip.create_model_and_transforms("local-dir:...")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .._io import atomic_path
from .render import IMAGE_SIZE, render

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 4, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
#: open_clip's default (OpenAI) normalisation; the renderer already produces images at the model size
PREPROCESS_CFG: dict[str, Any] = {
    "size": IMAGE_SIZE,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """What a training run does; identical configs on the same corpus give identical weights."""

    seed: int = 0
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    checkpoint_every: int = 250
    threads: int = 2
    render_workers: int = 2


def _render_chunk(args: tuple[list[str], list[str], list[int]]) -> np.ndarray:
    attrs, styles, seeds = args
    out = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, (a, st, sd) in enumerate(zip(attrs, styles, seeds, strict=True)):
        out[i] = np.asarray(render(json.loads(a), st, sd))
    return out


def corpus_fingerprint(table: pa.Table) -> str:
    """A short hash of the corpus rows that determine the pixels (attributes, style, render seed)."""
    h = hashlib.sha256()
    for col in ("attributes", "style", "render_seed"):
        h.update("\n".join(map(str, table.column(col).to_pylist())).encode())
    return h.hexdigest()[:16]


def render_corpus_images(table: pa.Table, cache_dir: Path, workers: int = 2,
                         progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """All corpus images as a (N, 64, 64, 3) uint8 array, cached as ``images-<fingerprint>.npy``.

    Rendering runs in ``workers`` processes; a cached array made from the same rows is reused.
    """
    path = cache_dir / f"images-{corpus_fingerprint(table)}.npy"
    if path.is_file():
        log.info("reusing rendered corpus images %s", path)
        return np.load(path, mmap_mode="r")
    n = table.num_rows
    attrs = table.column("attributes").to_pylist()
    styles = table.column("style").to_pylist()
    seeds = table.column("render_seed").to_pylist()
    chunk = 2000
    jobs = [(attrs[i:i + chunk], styles[i:i + chunk], seeds[i:i + chunk]) for i in range(0, n, chunk)]
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    start = time.monotonic()
    done = 0
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for k, arr in enumerate(pool.map(_render_chunk, jobs)):
            images[k * chunk:k * chunk + len(arr)] = arr
            done += len(arr)
            if progress:
                progress(done, n)
            log.info("rendered %d/%d corpus images (%.0f s)", done, n, time.monotonic() - start)
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, images)
    return images


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, embeddings and the logit scale (as in open_clip's trainer)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name or "bn" in name or "ln" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


def _batch_order(n: int, cfg: TrainConfig) -> np.ndarray:
    """Row indices of every step, fixed by the seed: shuffled epochs concatenated."""
    rng = np.random.default_rng(cfg.seed)
    need = cfg.steps * cfg.batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(need // n + 1)])
    return order[:need].reshape(cfg.steps, cfg.batch_size)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    import torch

    mean = torch.tensor(PREPROCESS_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS_CFG["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


def build_model(seed: int) -> torch.nn.Module:
    """A freshly initialised open_clip ``CLIP`` with ``MODEL_CFG`` (the same class open_clip's factory builds)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    return open_clip.model.CLIP(**MODEL_CFG, output_dict=True)


def save_model_dir(model: torch.nn.Module, target: str | Path, provenance: dict[str, Any]) -> Path:
    """Write ``model`` as an open_clip ``local-dir:`` folder (config + fp16 safetensors), atomically.

    The folder is assembled under a temporary name beside ``target`` and renamed into place; an existing
    folder is replaced only once the new one is complete.
    """
    import torch
    from safetensors.torch import save_file

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG, "zsclip_world": provenance}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            f.chmod(0o644)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model folder %s", target)
    return target


def train(table: pa.Table, out_dir: str | Path, model_dir: str | Path, cfg: TrainConfig = TrainConfig(),
          progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train the tiny CLIP on the corpus ``table``; write the model folder ``model_dir``.

    ``out_dir`` keeps the rendered-image cache and ``checkpoint.pt``; a checkpoint made with the same
    config and corpus is resumed. ``progress(step, steps, loss)`` is called after every step. Returns a
    summary (steps, final loss, seconds, corpus fingerprint).
    """
    import open_clip
    import torch

    torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = corpus_fingerprint(table)
    images = render_corpus_images(table, out_dir, cfg.render_workers)
    tokenizer = open_clip.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])
    tokens = tokenizer(table.column("caption").to_pylist())

    model = build_model(cfg.seed)
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                                  eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    order = _batch_order(table.num_rows, cfg)
    identity = {"config": asdict(cfg), "corpus": fingerprint, "model_cfg": MODEL_CFG}
    ckpt_path = out_dir / "checkpoint.pt"
    step = 0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("identity") == identity:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            step = ckpt["step"]
            log.info("resuming from %s at step %d", ckpt_path, step)
        else:
            log.info("ignoring %s: made with another config or corpus", ckpt_path)

    start = time.monotonic()
    loss_value = float("nan")
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        idx = np.sort(order[step])
        x = _to_tensor(images[idx])
        out = model(x, tokens[idx])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        loss_value = loss.detach().item()
        if progress:
            progress(step, cfg.steps, loss_value)
        if step % 50 == 0 or step == cfg.steps:
            log.info("step %d/%d loss %.3f logit scale %.1f (%.0f s)", step, cfg.steps, loss_value,
                     model.logit_scale.detach().exp().item(), time.monotonic() - start)
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            with atomic_path(ckpt_path, suffix=".pt") as tmp:
                torch.save({"identity": identity, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "step": step}, tmp)
    seconds = time.monotonic() - start
    summary = {"steps": cfg.steps, "final_loss": round(loss_value, 4), "train_seconds": round(seconds, 1),
               "corpus": fingerprint, "corpus_rows": table.num_rows, "config": asdict(cfg)}
    model.eval()
    save_model_dir(model, model_dir, summary)
    with contextlib.suppress(FileNotFoundError):
        ckpt_path.unlink()
    return summary
