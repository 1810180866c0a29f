"""Loading CLIP-family models through open_clip, batched encoding, and the model fingerprint.

A model is named the way open_clip names it:

* ``name`` + ``pretrained`` tag (``ViT-B-32`` + ``openai``): weights from the Hugging Face cache or the
  open_clip download cache;
* ``name`` + a checkpoint file (``ViT-B-32`` + ``/data/ckpt.pt``);
* ``local-dir:FOLDER``: a folder with ``open_clip_config.json`` and a weights file;
* ``hf-hub:ORG/NAME``: a Hugging Face repository in open_clip's layout;
* ``toyworld``: the tiny CLIP trained on zsclip's built-in offline world.

zsclip always resolves the weights to a file on this machine before it builds the model, so a missing
file gives one clear ``WeightsNotFoundError`` (where it looked, how to get it) instead of a network hang
or a randomly initialised model. ``HF_HUB_OFFLINE=1`` (or ``ZSCLIP_OFFLINE=1``) forbids any download.
Before downloading, one warning line says what is tried and one short connection check (2 s) tells an
unreachable hub at once, instead of the hub library's minute of retries; the library's retry chatter is
silenced during downloads. A weights file that is truncated, or that belongs to another architecture, is
one clear error naming the file and the architecture expected.

The fingerprint of a loaded model (architecture config + SHA-256 of the weights + preprocessing) keys
every cache: image stores and the text-embedding cache refuse to mix embeddings of different fingerprints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import write_json_atomic
from .errors import WeightsNotFoundError, ZsclipError, option
from .paths import cache_root

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
#: weights file names open_clip writes into a model folder, in order of preference
WEIGHT_FILE_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)
#: short names for models that ship with zsclip
_BUILTIN_DIRS = {"toyworld": Path(__file__).resolve().parent / "world" / "model"}
#: seconds the connection check before a download waits
CONNECT_CHECK_TIMEOUT = 2.0


def _offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "ZSCLIP_OFFLINE"))


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (tests change it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
        "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _clip_url_cache_dir() -> Path:
    return Path.home() / ".cache" / "clip"


def _hub_endpoint() -> str:
    """The Hugging Face hub address downloads go to: ``$HF_ENDPOINT``, else the library's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def unreachable(url: str, timeout: float = CONNECT_CHECK_TIMEOUT) -> str | None:
    """Why the server of ``url`` cannot be reached, from one TCP connection attempt (to the proxy when one
    is configured for it), or ``None`` when it accepts the connection."""
    from urllib.parse import urlsplit

    target = urlsplit(url)
    proxy = None if urllib.request.proxy_bypass(target.hostname or "") else urllib.request.getproxies().get(
        target.scheme)
    if proxy:
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = target.hostname or "", target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        where = f"proxy {host}:{port}" if proxy else f"{host}:{port}"
        return f"{where}: {exc.strerror or exc}"


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence the Hugging Face library's per-retry warnings; zsclip reports the outcome itself."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's config and weights come from, resolved to local files."""

    open_clip_name: str  # what to pass to open_clip.create_model_and_transforms
    weights: Path
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # the tag's preprocessing, if a tag
    source: str = ""  # human-readable origin for records


def _find_weights_in_dir(folder: Path) -> Path | None:
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _how_to_get(name: str, pretrained: str | None) -> str:
    if pretrained:
        fetch = f"`zsclip models download {name} {pretrained}`"
    else:
        fetch = f"`zsclip models download {name}`"
    return (
        f"On a machine with network access run {fetch} (it fills the Hugging Face cache, which you can "
        f"copy to this machine), or pass a checkpoint file with {option('--pretrained PATH', 'pretrained=PATH')}, or "
        f"a folder with open_clip_config.json and weights as "
        + option("--model local-dir:FOLDER", 'model="local-dir:FOLDER"') + "."
    )


def _hf_file(repo: str, filenames: Sequence[str], name: str, pretrained: str | None) -> Path:
    """Return the first of ``filenames`` found for ``repo`` in the HF cache, downloading if allowed."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = _hf_cache_dir()
    for fname in filenames:
        hit = try_to_load_from_cache(repo_id=repo, filename=fname, cache_dir=str(cache))
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    looked = f"{cache} (repository {repo}, files {', '.join(filenames)})"
    if _offline():
        raise WeightsNotFoundError(
            f"weights for {name}{' / ' + pretrained if pretrained else ''} are not on this machine: looked in "
            f"{looked}; downloads are off (HF_HUB_OFFLINE/ZSCLIP_OFFLINE is set). " + _how_to_get(name, pretrained)
        )
    endpoint = _hub_endpoint()
    log.warning("weights for %s are not in %s: trying to download them from %s (repository %s)",
                name + (" / " + pretrained if pretrained else ""), cache, endpoint, repo)
    problem = unreachable(endpoint)
    if problem:
        raise WeightsNotFoundError(
            f"weights for {name}{' / ' + pretrained if pretrained else ''} are not on this machine (looked in "
            f"{looked}) and the Hugging Face hub at {endpoint} cannot be reached ({problem}). "
            + _how_to_get(name, pretrained)
        )
    errors = []
    for fname in filenames:
        try:
            with _quiet_hub():
                return Path(hf_hub_download(repo_id=repo, filename=fname, cache_dir=str(cache), endpoint=endpoint))
        except Exception as exc:  # any network or hub failure is reported below, with the others
            errors.append(f"{fname}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise WeightsNotFoundError(
        f"weights for {name}{' / ' + pretrained if pretrained else ''} are not on this machine (looked in "
        f"{looked}) and could not be downloaded ({'; '.join(errors)}). " + _how_to_get(name, pretrained)
    )


def resolve_weights(name: str, pretrained: str | None = None) -> ResolvedWeights:
    """Resolve a model name (+ tag or file) to a local weights file, or raise ``WeightsNotFoundError``."""
    import open_clip

    if name in _BUILTIN_DIRS:
        name = LOCAL_DIR + str(_BUILTIN_DIRS[name])
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR) :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsNotFoundError(
                f"model folder {folder} has no open_clip_config.json; a local-dir: model needs the config and "
                f"a weights file ({', '.join(WEIGHT_FILE_NAMES[:3])})"
            )
        weights = _find_weights_in_dir(folder)
        if weights is None:
            raise WeightsNotFoundError(
                f"model folder {folder} has no weights file (looked for {', '.join(WEIGHT_FILE_NAMES)})"
            )
        return ResolvedWeights(LOCAL_DIR + str(folder), weights, source=f"local-dir:{folder}")
    if name.startswith(HF_HUB):
        repo = name[len(HF_HUB) :]
        config = _hf_file(repo, ["open_clip_config.json"], name, None)
        weights = _hf_file(repo, WEIGHT_FILE_NAMES[:3], name, None)
        if weights.parent != config.parent:
            raise WeightsNotFoundError(f"{name}: config and weights resolved to different snapshots; refresh the cache")
        return ResolvedWeights(LOCAL_DIR + str(config.parent), weights, source=name)

    clean = name.replace("/", "-")
    if clean not in open_clip.list_models():
        raise ZsclipError(
            f"unknown model {name!r}: not an open_clip architecture, a local-dir: folder or an hf-hub: repository. "
            "`zsclip models list` shows the architectures and their pretrained tags."
        )
    if not pretrained:
        tags = open_clip.list_pretrained_tags_by_model(clean)
        raise ZsclipError(
            f"model {name!r} needs weights: pass {option('--pretrained', 'pretrained=')} with a tag "
            f"({', '.join(tags) or 'none known'}) "
            "or a checkpoint file"
        )
    path = Path(pretrained).expanduser()
    if path.is_file():
        return ResolvedWeights(clean, path, source=str(path))
    cfg = open_clip.get_pretrained_cfg(clean, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(clean)
        raise ZsclipError(
            f"{option('--pretrained', 'pretrained=')}{pretrained!r} is neither a file nor a known tag of {clean}; "
            f"tags: {', '.join(tags) or 'none'}"
        )
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode", "quick_gelu") if k in cfg}
    if cfg.get("hf_hub"):
        repo, fname = os.path.split(cfg["hf_hub"])  # "org/repo/" or "org/repo/file.bin"
        names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        weights = _hf_file(repo, names, clean, pretrained)
    else:
        url = cfg.get("url", "")
        target = _clip_url_cache_dir() / os.path.basename(url)
        if not target.is_file():
            if _offline() or not url:
                raise WeightsNotFoundError(
                    f"weights for {clean} / {pretrained} are not on this machine: looked for {target}. "
                    + _how_to_get(clean, pretrained)
                )
            log.warning("weights for %s / %s are not at %s: trying to download them from %s", clean, pretrained,
                        target, url)
            problem = unreachable(url)
            if problem:
                raise WeightsNotFoundError(
                    f"weights for {clean} / {pretrained} are not at {target} and {url} cannot be reached "
                    f"({problem}). " + _how_to_get(clean, pretrained)
                )
            try:
                target = Path(open_clip.download_pretrained_from_url(url, cache_dir=str(target.parent)))
            except Exception as exc:
                raise WeightsNotFoundError(
                    f"weights for {clean} / {pretrained} are not at {target} and the download failed "
                    f"({type(exc).__name__}: {exc}). " + _how_to_get(clean, pretrained)
                ) from None
        weights = target
    return ResolvedWeights(clean, weights, pretrained_cfg=preprocess, source=f"{clean}/{pretrained}")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) under the cache root so it is hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_root() / "weights-sha256.json"
    memo: dict[str, str] = {}
    if memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    memo[key] = h.hexdigest()
    try:
        write_json_atomic(memo_path, memo)
    except OSError as exc:  # a read-only cache must not stop a run
        log.warning("could not remember the weights hash in %s: %s", memo_path, exc)
    return memo[key]


class Encoder:
    """A loaded open_clip model with its preprocessing, tokenizer and fingerprint.

    ``encode_images`` and ``encode_texts`` return L2-normalised float32 NumPy arrays.
    """

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, *, name: str, pretrained: str | None,
                 fingerprint: str, fingerprint_info: dict[str, Any], device: str, precision: str) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.fingerprint = fingerprint
        self.fingerprint_info = fingerprint_info
        self.device = device
        self.precision = precision

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature ``exp(logit_scale)`` (≈100 for trained CLIP)."""
        return float(self.model.logit_scale.exp().item())

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the model for records and store manifests."""
        return {"model": self.name, "pretrained": self.pretrained, "fingerprint": self.fingerprint,
                **self.fingerprint_info}

    def encode_images(self, pixels: Any) -> np.ndarray:
        """Encode a preprocessed image batch (a tensor ``B×3×H×W``)."""
        import torch

        with torch.inference_mode(), self._autocast():
            feats = self.model.encode_image(pixels.to(self.device))
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts in batches (no caching here: see ``TextEmbeddingCache``)."""
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.inference_mode(), self._autocast():
                feats = self.model.encode_text(tokens)
                feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out.append(feats.cpu().numpy().astype(np.float32, copy=False))
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(out)

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if proj is not None and hasattr(proj, "shape"):
            return int(proj.shape[-1])
        return int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])

    def truncated(self, texts: Sequence[str]) -> list[str]:
        """The texts longer than the tokenizer's context length (their tail is cut when encoded)."""
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return []
        limit = self.context_length - 2  # start and end tokens
        return [t for t in texts if len(encode(t)) > limit]

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.precision in ("fp16", "bf16") and self.device.startswith("cuda"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ZsclipError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")
    return device


def load_model(name: str = "ViT-B-32", pretrained: str | None = "openai", *, device: str = "auto",
               precision: str = "fp32") -> Encoder:
    """Load a CLIP-family model for encoding.

    Args:
        name: open_clip architecture, ``local-dir:FOLDER``, ``hf-hub:ORG/NAME`` or ``toyworld``.
        pretrained: a tag of the architecture or a checkpoint file (ignored for ``local-dir:``/``hf-hub:``).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
        precision: ``fp32``; ``fp16``/``bf16`` use autocast on CUDA (weights stay fp32).
    """
    import open_clip

    if precision not in ("fp32", "fp16", "bf16"):
        raise ZsclipError(f"--precision must be fp32, fp16 or bf16, got {precision!r}")
    device = _pick_device(device)
    resolved = resolve_weights(name, pretrained)
    cfg = resolved.pretrained_cfg
    kwargs: dict[str, Any] = {}
    if not resolved.open_clip_name.startswith(LOCAL_DIR):
        kwargs["pretrained"] = str(resolved.weights)
        for ours, theirs in (("mean", "image_mean"), ("std", "image_std"),
                             ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
            if ours in cfg:
                kwargs[theirs] = cfg[ours]
        if cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
    _check_readable(resolved.weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # QuickGELU notes are handled by force_quick_gelu
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                resolved.open_clip_name, device=device, **kwargs
            )
        except Exception as exc:  # open_clip fails in many ways (RuntimeError, AssertionError, ...): explain it
            raise ZsclipError(_build_error(name, resolved, exc)) from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(resolved.open_clip_name)
    arch = open_clip.get_model_config(resolved.open_clip_name) or {}
    pre = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    info = {
        "architecture_sha256": hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16],
        "weights_sha256": file_sha256(resolved.weights),
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(pre.items())},
        "quick_gelu": bool(cfg.get("quick_gelu", arch.get("quick_gelu", False))),
        "source": resolved.source,
    }
    fingerprint = hashlib.sha256(json.dumps(info | {"source": None}, sort_keys=True).encode()).hexdigest()[:20]
    log.info("loaded %s (%s) on %s, fingerprint %s", name, resolved.source, device, fingerprint)
    return Encoder(model, preprocess, tokenizer, name=name, pretrained=pretrained if not
                   resolved.open_clip_name.startswith(LOCAL_DIR) else None, fingerprint=fingerprint,
                   fingerprint_info=info, device=device, precision=precision)


def _check_readable(weights: Path) -> None:
    """Raise a clear error when a safetensors file's header does not cover the file (truncated or corrupt)."""
    if weights.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except Exception as exc:
        raise ZsclipError(f"weights file {weights} ({weights.stat().st_size:,} bytes) is not a readable safetensors "
                          f"file ({exc}): it is truncated or corrupt; download or copy it again") from None


def _mismatch(open_clip_name: str, weights: Path) -> str | None:
    """How the tensors of ``weights`` differ from the architecture's ("2 missing (e.g. x), 3 of other shapes
    (e.g. y)"), or ``None`` when they fit or cannot be compared."""
    import open_clip
    import torch
    from open_clip.factory import load_state_dict

    root = logging.getLogger()
    no_random_init_note = logging.Filter("zsclip")  # drops open_clip's "initialized randomly" note (on root)
    root.addFilter(no_random_init_note)
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = open_clip.create_model(open_clip_name, device="meta")
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in load_state_dict(str(weights)).items()}
    except Exception:  # the comparison is a courtesy: the caller still reports the failure
        return None
    finally:
        root.removeFilter(no_random_init_note)
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and found[k] != expected[k]]
    parts = [f"{len(keys)} {label} (e.g. {keys[0]})" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("of other shapes", reshaped)) if keys]
    return ", ".join(parts) + " tensors" if parts else None


def _build_error(name: str, resolved: ResolvedWeights, exc: Exception) -> str:
    """One line for a model open_clip could not build: the file, the architecture expected and what differs."""
    arch = resolved.open_clip_name
    if arch.startswith(LOCAL_DIR):
        arch = f"{name} (described by {Path(arch[len(LOCAL_DIR):]) / 'open_clip_config.json'})"
    mismatch = _mismatch(resolved.open_clip_name, resolved.weights)
    if mismatch:
        return (f"weights file {resolved.weights} does not fit the {arch} architecture: {mismatch}. It was saved "
                "from another model: give that model's architecture as the model name, or the right weights file")
    first = re.sub(r"\s+", " ", str(exc)).strip()[:300]
    return (f"open_clip could not build {arch} from {resolved.weights} ({type(exc).__name__}: {first}); check that "
            "the file is a complete checkpoint of this architecture")


def list_models() -> list[dict[str, Any]]:
    """Every open_clip (architecture, tag) pair plus zsclip's built-ins, each marked cached or not."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    rows: list[dict[str, Any]] = []
    for alias, folder in _BUILTIN_DIRS.items():
        rows.append({"model": alias, "pretrained": "(built-in)", "cached": _find_weights_in_dir(folder) is not None})
    cache = str(_hf_cache_dir())
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        cached = False
        if cfg.get("hf_hub"):
            repo, fname = os.path.split(cfg["hf_hub"])
            for f in [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
                if isinstance(try_to_load_from_cache(repo_id=repo, filename=f, cache_dir=cache), str):
                    cached = True
        elif cfg.get("url"):
            cached = (_clip_url_cache_dir() / os.path.basename(cfg["url"])).is_file()
        rows.append({"model": arch, "pretrained": tag, "cached": cached})
    return rows
