"""Small on-disk datasets and archives for tests: CUB in its real layout, image folders, tarballs, a server;
and a model-free text encoder for text-cache tests.

Plain functions (import them with ``from fixtures_data import make_cub_folder``); every image is a tiny
generated JPEG/PNG whose colour and stripe pattern depend on its class, so classes really differ.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import random
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image

_COLORS = [
    "blue", "brown", "iridescent", "purple", "rufous", "grey", "yellow", "olive",
    "green", "pink", "orange", "black", "white", "red", "buff",
]  # fmt: skip
_PATTERNS = ["solid", "spotted", "striped", "multi-colored"]

#: CUB's 28 attribute groups and their values, in the official attribute-id order (312 attributes)
CUB_ATTRIBUTE_GROUPS: list[tuple[str, list[str]]] = [
    ("has_bill_shape", ["curved_(up_or_down)", "dagger", "hooked", "needle", "hooked_seabird", "spatulate",
                        "all-purpose", "cone", "specialized"]),
    ("has_wing_color", _COLORS),
    ("has_upperparts_color", _COLORS),
    ("has_underparts_color", _COLORS),
    ("has_breast_pattern", _PATTERNS),
    ("has_back_color", _COLORS),
    ("has_tail_shape", ["forked_tail", "rounded_tail", "notched_tail", "fan-shaped_tail", "pointed_tail",
                        "squared_tail"]),
    ("has_upper_tail_color", _COLORS),
    ("has_head_pattern", ["spotted", "malar", "crested", "masked", "unique_pattern", "eyebrow", "eyering",
                          "plain", "eyeline", "striped", "capped"]),
    ("has_breast_color", _COLORS),
    ("has_throat_color", _COLORS),
    ("has_eye_color", [c for c in _COLORS if c != "iridescent"]),
    ("has_bill_length", ["about_the_same_as_head", "longer_than_head", "shorter_than_head"]),
    ("has_forehead_color", _COLORS),
    ("has_under_tail_color", _COLORS),
    ("has_nape_color", _COLORS),
    ("has_belly_color", _COLORS),
    ("has_wing_shape", ["rounded-wings", "pointed-wings", "broad-wings", "tapered-wings", "long-wings"]),
    ("has_size", ["large_(16_-_32_in)", "small_(5_-_9_in)", "very_large_(32_-_72_in)", "medium_(9_-_16_in)",
                  "very_small_(3_-_5_in)"]),
    ("has_shape", ["upright-perching_water-like", "chicken-like-marsh", "long-legged-like", "duck-like",
                   "owl-like", "gull-like", "hummingbird-like", "pigeon-like", "tree-clinging-like",
                   "hawk-like", "sandpiper-like", "upland-ground-like", "swallow-like", "perching-like"]),
    ("has_back_pattern", _PATTERNS),
    ("has_tail_pattern", _PATTERNS),
    ("has_belly_pattern", _PATTERNS),
    ("has_primary_color", _COLORS),
    ("has_leg_color", _COLORS),
    ("has_bill_color", _COLORS),
    ("has_crown_color", _COLORS),
    ("has_wing_pattern", _PATTERNS),
]  # fmt: skip

#: all 312 CUB attribute names, index i = attribute id i + 1
CUB_ATTRIBUTE_NAMES: list[str] = [f"{group}::{value}" for group, values in CUB_ATTRIBUTE_GROUPS for value in values]

#: the attributes make_cub_folder writes (a spread over the groups, renumbered 1..N in this order)
CUB_FIXTURE_ATTRIBUTES: list[str] = [
    "has_bill_shape::dagger",
    "has_bill_shape::cone",
    "has_wing_color::blue",
    "has_wing_color::black",
    "has_breast_pattern::striped",
    "has_back_color::olive",
    "has_tail_shape::forked_tail",
    "has_head_pattern::eyering",
    "has_eye_color::red",
    "has_bill_length::longer_than_head",
    "has_size::large_(16_-_32_in)",
    "has_size::very_small_(3_-_5_in)",
    "has_shape::duck-like",
    "has_shape::perching-like",
    "has_primary_color::white",
]

#: real CUB class folders (the first 22 of the 200); make_cub_folder makes up names past these
CUB_CLASS_FOLDERS: list[str] = [
    "001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani",
    "005.Crested_Auklet", "006.Least_Auklet", "007.Parakeet_Auklet", "008.Rhinoceros_Auklet",
    "009.Brewer_Blackbird", "010.Red_winged_Blackbird", "011.Rusty_Blackbird", "012.Yellow_headed_Blackbird",
    "013.Bobolink", "014.Indigo_Bunting", "015.Lazuli_Bunting", "016.Painted_Bunting", "017.Cardinal",
    "018.Spotted_Catbird", "019.Gray_Catbird", "020.Yellow_breasted_Chat", "021.Eastern_Towhee",
    "022.Chuck_will_Widow",
]  # fmt: skip


def class_image(label: int, size: int = 32, rng: random.Random | None = None) -> Image.Image:
    """A small RGB image for class ``label``: a class colour with class-dependent stripes, plus noise."""
    rng = rng or random.Random(label)
    hue = (label * 47) % 256
    base = ((hue * 3) % 256, (hue * 7 + 80) % 256, (hue * 11 + 160) % 256)
    period = 2 + label % 6
    img = Image.new("RGB", (size, size), base)
    pixels = img.load()
    for y in range(size):
        for x in range(size):
            jitter = rng.randint(-12, 12)
            if (x + (y if label % 2 else 0)) // period % 2:
                r, g, b = (255 - c for c in base)
            else:
                r, g, b = base
            pixels[x, y] = (
                max(0, min(255, r + jitter)),
                max(0, min(255, g + jitter)),
                max(0, min(255, b + jitter)),
            )
    return img


def make_cub_folder(
    root: str | Path,
    n_classes: int = 5,
    images_per_class: int = 6,
    corrupt: int = 1,
    size: int = 32,
    seed: int = 0,
    attributes: bool = True,
) -> Path:
    """Write a tiny CUB-200-2011 in its real layout under ``root``; return the ``CUB_200_2011`` folder.

    Per class the first half of its images are train (``train_test_split.txt`` 1), the rest test. The last
    image of each of the first ``corrupt`` classes (a test image) is garbage bytes named ``.jpg``. With
    ``attributes``, ``attributes.txt`` goes beside ``CUB_200_2011/`` as in the official archive (holding
    the 15 ``CUB_FIXTURE_ATTRIBUTES``) and ``attributes/class_attribute_labels_continuous.txt`` holds
    per-class percentages in which class ``c`` shows attribute ``c mod 15`` at 90% and the others at 10%
    or less.
    """
    rng = random.Random(seed)
    base = Path(root) / "CUB_200_2011"
    folders = CUB_CLASS_FOLDERS[:n_classes] + [
        f"{i:03d}.Made_up_Bird_{i}" for i in range(len(CUB_CLASS_FOLDERS) + 1, n_classes + 1)
    ]
    images_lines, label_lines, split_lines = [], [], []
    image_id = 0
    for label, folder in enumerate(folders):
        (base / "images" / folder).mkdir(parents=True, exist_ok=True)
        species = folder.split(".", 1)[1]
        for k in range(images_per_class):
            image_id += 1
            rel = f"{folder}/{species}_{k + 1:04d}_{image_id}.jpg"
            path = base / "images" / rel
            if label < corrupt and k == images_per_class - 1:
                path.write_bytes(b"\x00not a jpeg\xff" * 8)
            else:
                class_image(label, size, rng).save(path, format="JPEG", quality=90)
            images_lines.append(f"{image_id} {rel}")
            label_lines.append(f"{image_id} {label + 1}")
            split_lines.append(f"{image_id} {1 if k < images_per_class // 2 else 0}")
    _write_lines(base / "classes.txt", [f"{i + 1} {folder}" for i, folder in enumerate(folders)])
    _write_lines(base / "images.txt", images_lines)
    _write_lines(base / "image_class_labels.txt", label_lines)
    _write_lines(base / "train_test_split.txt", split_lines)
    if attributes:
        names = CUB_FIXTURE_ATTRIBUTES
        _write_lines(Path(root) / "attributes.txt", [f"{i + 1} {name}" for i, name in enumerate(names)])
        rows = []
        for label in range(n_classes):
            row = [90.0 if j == label % len(names) else round(rng.uniform(0, 10), 6) for j in range(len(names))]
            rows.append(" ".join(f"{v:g}" for v in row))
        (base / "attributes").mkdir(exist_ok=True)
        _write_lines(base / "attributes" / "class_attribute_labels_continuous.txt", rows)
    return base


def make_folder_dataset(
    root: str | Path,
    classes: Sequence[str] = ("001.red_fox", "002.grey_wolf", "003.brown_bear"),
    per_class: int = 3,
    splits: bool = True,
    size: int = 16,
    val: bool = False,
) -> Path:
    """Write an image-folder dataset under ``root`` and return ``root``.

    With ``splits`` the layout is ``root/{train,test}/<class>/``, else ``root/<class>/``; ``val`` adds
    ``root/val/<class>/`` with images of other random draws than train and test. Images alternate
    between ``.jpg`` and upper-case ``.PNG`` names; each class folder also holds a ``notes.txt`` that is not
    an image and a hidden ``.thumb.jpg`` that must be skipped.
    """
    root = Path(root)
    parents = [root / "train", root / "test"] if splits else [root]
    if val:
        parents.append(root / "val")
    for parent in parents:
        offset = 1000 if parent.name == "val" and val else 0
        for label, name in enumerate(classes):
            folder = parent / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                img = class_image(label, size, random.Random(offset + k))
                if k % 2:
                    img.save(folder / f"img_{k:03d}.PNG", format="PNG")
                else:
                    img.save(folder / f"img_{k:03d}.jpg", format="JPEG")
            (folder / "notes.txt").write_text("not an image\n")
            (folder / ".thumb.jpg").write_bytes(b"hidden")
    return root


def make_tarball(src_dir: str | Path, out_path: str | Path, top_level: bool = True) -> Path:
    """Pack ``src_dir`` into a gzipped tarball at ``out_path``.

    With ``top_level`` the archive holds one folder named like ``src_dir``; without, it holds the entries
    of ``src_dir`` (as the official CUB archive holds ``CUB_200_2011/`` and ``attributes.txt``).
    """
    src_dir, out_path = Path(src_dir), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out_path, "w:gz") as tar:
        if top_level:
            tar.add(src_dir, arcname=src_dir.name)
        else:
            for entry in sorted(src_dir.iterdir()):
                tar.add(entry, arcname=entry.name)
    return out_path


def make_malicious_tarball(out_path: str | Path, kind: str = "dotdot") -> Path:
    """A tarball with one harmless file and one member that would write outside the destination.

    ``kind``: ``dotdot`` (``../escaped.txt``), ``absolute`` (``/tmp/.../escaped.txt``), ``symlink`` (a link
    to ``../..``), ``hardlink`` (a hard link to ``../escaped.txt``) or ``device`` (a character device).
    """
    out_path = Path(out_path)
    payload = b"should never be written\n"

    def add_file(tar: tarfile.TarFile, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    with tarfile.open(out_path, "w:gz") as tar:
        add_file(tar, "data/ok.txt")
        if kind == "dotdot":
            add_file(tar, "data/../../escaped.txt")
        elif kind == "absolute":
            add_file(tar, str(out_path.parent / "absolute_escaped.txt"))
        elif kind in ("symlink", "hardlink"):
            info = tarfile.TarInfo("data/link")
            info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            info.linkname = "../.." if kind == "symlink" else "../escaped.txt"
            tar.addfile(info)
        elif kind == "device":
            info = tarfile.TarInfo("data/dev")
            info.type = tarfile.CHRTYPE
            info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return out_path


@contextlib.contextmanager
def serve_directory(directory: str | Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static-file handler that does not log each request to stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        pass


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines`` with a trailing newline, as CUB's text files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class HashTextEncoder:
    """A text encoder stand-in for text-cache tests that need no model: each text's vector is a fixed unit vector
    drawn from a hash of the text (cheap to load in a child process).

    ``rendezvous`` (a folder and a name): the first ``encode_texts`` call writes a marker file named after this
    encoder and waits until every marker named in ``rendezvous[2]`` is there, so several processes are all
    inside ``encode_texts`` (between reading the cache and writing it) at the same moment.
    """

    fingerprint = "hash-text-encoder-v1"
    embed_dim = 32

    def __init__(self, rendezvous: tuple[str, str, Sequence[str]] | None = None) -> None:
        self.rendezvous = rendezvous
        self.calls = 0

    def vector(self, text: str):
        import hashlib

        import numpy as np

        seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).normal(size=self.embed_dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256):
        import numpy as np

        self.calls += 1
        if self.rendezvous is not None and self.calls == 1:
            folder, me, everyone = Path(self.rendezvous[0]), self.rendezvous[1], self.rendezvous[2]
            (folder / f"{me}.inside").write_text("")
            for _ in range(120_000):  # a condition, polled; the bound keeps a lost partner from hanging a test run
                if all((folder / f"{name}.inside").exists() for name in everyone):
                    break
                time.sleep(0.005)
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.embed_dim), np.float32)


@contextlib.contextmanager
def crash_at_shard(shard: int) -> Iterator[None]:
    """Inside the block, a store build raises ``KeyboardInterrupt`` when it starts encoding its ``shard``-th shard
    (1-based): a simulated crash after ``shard - 1`` whole shards. The real encoder is back after the block."""
    from zsclip import stores

    real = stores._encode_samples
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == shard:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    stores._encode_samples = crashing
    try:
        yield
    finally:
        stores._encode_samples = real
