"""The toy world's evaluation dataset: balanced train/val/test splits of rendered creatures, no files needed.

Images are rendered on demand from deterministic seeds (``Sample.path`` is ``"toyworld:<split>/<index>"``),
so the dataset exists on every machine without a download. All splits use one rendering style (by default
``spec.EVAL_STYLE``, "sketch"), which is rare in the pretraining corpus where photos dominate: the
template ("a sketch of a {}." against "a photo of a {}.") therefore matters, as it does on real datasets.
Render seeds of the evaluation images start at ``corpus.CORPUS_SEED_LIMIT``, so no evaluation image is a
corpus image, and the splits' seeds are disjoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DatasetError
from ..world import (
    CORPUS_SEED_LIMIT,
    DEFAULT_SEED,
    EVAL_STYLE,
    STYLES,
    attribute_phrases,
    build_world,
    instance_attributes,
    render,
)
from .base import Dataset, Sample, register_dataset
from .download import load_card

#: images per species in each split
SPLIT_SIZES = {"train": 16, "val": 10, "test": 30}
_SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}


class ToyWorldDataset(Dataset):
    """The creatures of the toy world built from ``seed``, rendered in ``style``.

    Samples are ordered by label; each species has ``SPLIT_SIZES[split]`` images per split.
    """

    name = "toyworld"
    splits = ("train", "val", "test")
    default_split = "test"

    def __init__(self, seed: int = DEFAULT_SEED, style: str = EVAL_STYLE) -> None:
        super().__init__()
        if style not in STYLES:
            raise DatasetError(f"toyworld has no style {style!r}; styles: {', '.join(STYLES)}")
        self.world = build_world(seed)
        self.style = style
        self.root = None
        self.classnames = self.world.classnames
        self.card = load_card("toyworld")

    def render_seed(self, split: str, index: int) -> int:
        """The render seed of image ``index`` of ``split`` (unique across splits and the corpus)."""
        return CORPUS_SEED_LIMIT + _SPLIT_OFFSET[split] + index

    def _load_split(self, split: str) -> list[Sample]:
        n = SPLIT_SIZES[split]
        return [Sample(path=f"toyworld:{split}/{i:06d}", label=i // n) for i in range(n * len(self.classnames))]

    def _parse(self, sample: Sample) -> tuple[str, int]:
        prefix, _, rest = sample.path.partition(":")
        split, _, index = rest.partition("/")
        if prefix != "toyworld" or split not in self.splits or not index.isdigit():
            raise DatasetError(f"not a toyworld sample path: {sample.path!r} (expected 'toyworld:test/000123')")
        return split, int(index)

    def load_image(self, sample: Sample) -> Image.Image:
        """Render the sample's creature from its seed (same sample, same pixels)."""
        split, index = self._parse(sample)
        seed = self.render_seed(split, index)
        return render(instance_attributes(self.world, sample.label, seed), self.style, seed)

    def image_signature(self, sample: Sample) -> tuple[int, int]:
        """Rendered images have no file, so they never go stale: always (-1, -1), no file-system call."""
        return (-1, -1)

    def attribute_descriptors(self, threshold: float = 50.0) -> dict[str, list[str]]:
        """One true descriptor per attribute of every species (the world's ground truth; ``threshold`` is
        unused because toy-world attributes are exact)."""
        return {s.name: attribute_phrases(s) for s in self.world.species}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"style": self.style, "world_seed": self.world.seed})
        return info


@register_dataset("toyworld", "toy world: 100 procedurally drawn creature species, rendered offline (sketch style)")
def _make_toyworld(root: Path | None = None, seed: int = DEFAULT_SEED, style: str = EVAL_STYLE) -> ToyWorldDataset:
    return ToyWorldDataset(seed=seed, style=style)
