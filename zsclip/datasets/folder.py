"""Any image collection laid out as one folder per class, optionally split into train/val/test folders.

Two layouts are read: ``root/<class>/<image>`` (one split, ``all``) and ``root/<split>/<class>/<image>``
with ``split`` among ``train``, ``val``, ``test`` (the class list is the sorted union over the splits).
A class folder's name gives the class name: a leading ``NNN.`` numbering is dropped and underscores
become spaces (``001.Black_footed_Albatross`` -> ``Black footed Albatross``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import DatasetError, option
from .base import Dataset, Sample, register_dataset

logger = logging.getLogger(__name__)

#: file-name endings read as images (compared case-insensitively)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
_SPLIT_FOLDERS = ("train", "val", "test")
_NUMBER_PREFIX = re.compile(r"^\d+\.")


def folder_classname(folder: str) -> str:
    """The class name of a class folder: numbering ``NNN.`` removed, underscores to spaces."""
    return " ".join(_NUMBER_PREFIX.sub("", folder).replace("_", " ").split())


def _visible_dirs(path: Path) -> list[Path]:
    """Sub-folders of ``path`` not hidden by a leading dot, sorted by name."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden files skipped), sorted by relative path."""
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


@register_dataset("folder", "any image folder: ROOT/<class>/*.jpg or ROOT/{train,val,test}/<class>/*.jpg")
class ImageFolderDataset(Dataset):
    """Images sorted into class folders (see the module docstring for the two layouts).

    The folders are listed at construction, so a root with no images fails at once. The default split is
    ``test`` when present (else ``val``, else ``train``), or ``all`` for the single-split layout.
    """

    name = "folder"

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__()
        if root is None:
            raise DatasetError(f"the folder dataset needs its folder: pass {option('--dataset-root DIR', 'root=DIR')}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        self.root = root.resolve()
        split_dirs = {p.name: p for p in _visible_dirs(self.root) if p.name in _SPLIT_FOLDERS}
        if split_dirs:
            self.splits = tuple(s for s in _SPLIT_FOLDERS if s in split_dirs)
            self.default_split = next(s for s in ("test", "val", "train") if s in split_dirs)
            others = [p.name for p in _visible_dirs(self.root) if p.name not in split_dirs]
            if others:
                logger.warning("%s has split folders; ignoring its other folders: %s", self.root, ", ".join(others))
        else:
            split_dirs = {"all": self.root}
            self.splits = ("all",)
            self.default_split = "all"
        class_dirs = {split: _visible_dirs(path) for split, path in split_dirs.items()}
        self.class_folders = sorted({d.name for dirs in class_dirs.values() for d in dirs})
        if not self.class_folders:
            raise DatasetError(
                f"no class folders in {self.root}; expected ROOT/<class>/<images> or "
                "ROOT/{train,val,test}/<class>/<images>"
            )
        self.classnames = [folder_classname(f) for f in self.class_folders]
        seen: dict[str, str] = {}
        for folder, classname in zip(self.class_folders, self.classnames, strict=True):
            if classname in seen:
                raise DatasetError(
                    f"class folders {seen[classname]!r} and {folder!r} in {self.root} both give the class "
                    f"name {classname!r}; rename one of them"
                )
            seen[classname] = folder
        label_of = {folder: i for i, folder in enumerate(self.class_folders)}
        for split, dirs in class_dirs.items():
            samples = [Sample(path=str(image), label=label_of[d.name]) for d in dirs for image in _images_under(d)]
            if not samples:
                raise DatasetError(
                    f"no images in {split_dirs[split]} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} "
                    "files in its class folders)"
                )
            self._split_cache[split] = samples

    def _load_split(self, split: str) -> list[Sample]:
        """Every split is listed at construction; this only returns one."""
        return self._split_cache[split]
