"""The toy world: a procedural image world, its caption corpus and a tiny CLIP, for offline end-to-end tests.

No pretrained CLIP and no real dataset can be downloaded on an offline machine, so zsclip carries a small
world of its own in which every method can be run and checked: made-up creature species drawn from visual
attributes (``spec``, ``render``), a long-tailed pretraining corpus that names some species often, some by a
nickname and some never (``corpus``), LLM-like descriptor and synonym files, and a tiny open_clip model
trained on the corpus (``train``) and committed as the ``local-dir:`` folder ``zsclip/world/model``. The
evaluation dataset is registered as ``toyworld`` (``zsclip.datasets.toyworld``). Training lives in
``zsclip.world.train`` (not imported here, so that loading the dataset does not import torch).
"""

from pathlib import Path

from .corpus import (
    CORPUS_SEED_LIMIT,
    build_corpus,
    make_caption,
    read_corpus,
    real_synonyms,
    synonym_counts,
    write_corpus,
)
from .render import IMAGE_SIZE, render
from .spec import (
    ATTRIBUTES,
    DEFAULT_SEED,
    EVAL_STYLE,
    STYLES,
    TIERS,
    Species,
    World,
    attribute_phrases,
    build_world,
    dataset_card,
    descriptors,
    instance_attributes,
    world_summary,
)

#: the committed tiny CLIP: ``open_clip.create_model_and_transforms(f"local-dir:{MODEL_DIR}")``
MODEL_DIR = Path(__file__).resolve().parent / "model"

__all__ = [
    "ATTRIBUTES",
    "CORPUS_SEED_LIMIT",
    "DEFAULT_SEED",
    "EVAL_STYLE",
    "IMAGE_SIZE",
    "MODEL_DIR",
    "STYLES",
    "TIERS",
    "Species",
    "World",
    "attribute_phrases",
    "build_corpus",
    "build_world",
    "dataset_card",
    "descriptors",
    "instance_attributes",
    "make_caption",
    "read_corpus",
    "real_synonyms",
    "render",
    "synonym_counts",
    "world_summary",
    "write_corpus",
]
