"""Class heads: a ``C × D`` weight matrix with class names and provenance — what single-vector methods score with.

A zero-shot prompt set with a ``prototype``/``mean``/``sum`` aggregation folds into a head (one weight per
class); trained heads (a linear probe, REAL-Linear) are heads too, and ``wise_ft`` mixes two of them
(WiSE-FT: ``alpha · learned + (1 − alpha) · zero-shot``). A head scores image embeddings with one matrix
product (plus an optional bias) and is saved as ``NAME.safetensors`` (weights, bias) beside ``NAME.json``
(class names, provenance, shape and a checksum of the weights, checked on load).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path, read_json, write_json_atomic
from .errors import ZsclipError

HEAD_FORMAT = 1


def _digest(weights: np.ndarray, bias: np.ndarray | None) -> str:
    h = hashlib.sha256(np.ascontiguousarray(weights, dtype=np.float32).tobytes())
    if bias is not None:
        h.update(np.ascontiguousarray(bias, dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ClassHead:
    """``weights`` (C × D, float32), optional ``bias`` (C), ``classnames`` (C) and ``provenance`` (JSON-able)."""

    weights: np.ndarray
    classnames: tuple[str, ...]
    bias: np.ndarray | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = np.ascontiguousarray(self.weights, dtype=np.float32)
        if w.ndim != 2 or w.shape[0] != len(self.classnames):
            raise ZsclipError(f"a class head needs a C × D weight matrix with one row per class name; got shape "
                              f"{w.shape} for {len(self.classnames)} classes")
        if not np.isfinite(w).all():
            raise ZsclipError("a class head's weights must be finite")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "classnames", tuple(self.classnames))
        if self.bias is not None:
            b = np.ascontiguousarray(self.bias, dtype=np.float32).ravel()
            if b.shape != (w.shape[0],):
                raise ZsclipError(f"a class head's bias needs {w.shape[0]} values, got {b.shape}")
            object.__setattr__(self, "bias", b)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def scores(self, image_embeddings: np.ndarray, chunk_size: int = 8192) -> np.ndarray:
        """``N × C`` scores ``V · Wᵀ (+ b)`` for ``N × D`` embeddings (any float dtype, memmaps too), chunked."""
        if image_embeddings.ndim != 2 or image_embeddings.shape[1] != self.dim:
            raise ZsclipError(f"image embeddings of shape {image_embeddings.shape} do not match the head's "
                              f"dimension {self.dim}: made by another model?")
        out = np.empty((image_embeddings.shape[0], len(self.classnames)), dtype=np.float32)
        for start in range(0, len(out), chunk_size):
            block = np.asarray(image_embeddings[start : start + chunk_size], dtype=np.float32)
            np.matmul(block, self.weights.T, out=out[start : start + len(block)])
        if self.bias is not None:
            out += self.bias
        return out

    def predict(self, image_embeddings: np.ndarray) -> np.ndarray:
        return self.scores(image_embeddings).argmax(axis=1)

    def save(self, path: str | Path) -> Path:
        """Write ``PATH.safetensors`` and ``PATH.json`` (atomically); returns the JSON path."""
        from safetensors.numpy import save_file

        base = Path(path).expanduser()
        base = base.with_suffix("") if base.suffix in (".json", ".safetensors") else base
        tensors = {"weights": self.weights}
        if self.bias is not None:
            tensors["bias"] = self.bias
        with atomic_path(base.with_suffix(".safetensors"), suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp))
        meta = {"format": HEAD_FORMAT, "classnames": list(self.classnames), "shape": list(self.weights.shape),
                "has_bias": self.bias is not None, "sha256": _digest(self.weights, self.bias),
                "provenance": dict(self.provenance)}
        write_json_atomic(base.with_suffix(".json"), meta)
        return base.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> ClassHead:
        """Read a head written by ``save`` (either file's path, or the shared stem); checks shape and checksum."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        base = Path(path).expanduser()
        base = base.with_suffix("") if base.suffix in (".json", ".safetensors") else base
        meta = read_json(base.with_suffix(".json"), what="class head description")
        tensor_path = base.with_suffix(".safetensors")
        if not tensor_path.is_file():
            raise ZsclipError(f"class head weights missing: {tensor_path} (written beside {base.with_suffix('.json')})")
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ZsclipError(f"class head weights {tensor_path} cannot be read ({exc}); the file is damaged: "
                              "save the head again") from None
        weights, bias = tensors.get("weights"), tensors.get("bias")
        if weights is None or list(weights.shape) != meta.get("shape") or _digest(weights, bias) != meta.get("sha256"):
            raise ZsclipError(f"class head {tensor_path} does not match {base.with_suffix('.json')} (shape or "
                              "checksum differ): the files are damaged or from different heads; save the head again")
        return cls(weights, tuple(meta["classnames"]), bias, meta.get("provenance", {}))


def wise_ft(zero_shot: ClassHead, learned: ClassHead, alpha: float = 0.5) -> ClassHead:
    """WiSE-FT: ``alpha · learned + (1 − alpha) · zero_shot``, not renormalised (as REAL-Linear's authors do).

    ``alpha = 0`` is the zero-shot head, ``1`` the learned one; both heads must cover the same classes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ZsclipError(f"WiSE-FT's alpha must be in [0, 1], got {alpha}")
    if zero_shot.classnames != learned.classnames or zero_shot.weights.shape != learned.weights.shape:
        raise ZsclipError("WiSE-FT mixes two heads over the same classes and dimension; these differ")
    bias = None
    if zero_shot.bias is not None or learned.bias is not None:
        zb = zero_shot.bias if zero_shot.bias is not None else 0.0
        lb = learned.bias if learned.bias is not None else 0.0
        bias = alpha * np.asarray(lb) + (1 - alpha) * np.asarray(zb)
        bias = np.broadcast_to(bias, (len(zero_shot.classnames),))
    weights = alpha * learned.weights + (1 - alpha) * zero_shot.weights
    return ClassHead(weights, zero_shot.classnames, bias,
                     {"wise_ft": {"alpha": alpha, "zero_shot": dict(zero_shot.provenance),
                                  "learned": dict(learned.provenance)}})


def train_linear_probe(embeddings: np.ndarray, labels: np.ndarray, classnames: Sequence[str], c: float = 10.0,
                       max_iter: int = 2000) -> ClassHead:
    """A multinomial logistic-regression probe (scikit-learn, L2, inverse strength ``c``) as a head with bias.

    The toy world's table uses it, trained on every training label, as the ceiling of what the image tower
    separates.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(present) != len(classnames):
        raise ZsclipError(f"a linear probe needs training images of every class; {len(classnames) - len(present)} "
                          "classes have none")
    probe = LogisticRegression(C=c, max_iter=max_iter)
    probe.fit(np.asarray(embeddings, dtype=np.float32), labels)
    return ClassHead(probe.coef_, tuple(classnames), probe.intercept_,
                     {"kind": "linear-probe", "C": c, "train_images": int(len(labels))})
