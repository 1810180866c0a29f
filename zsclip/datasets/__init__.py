"""Dataset loaders and their registry (``get_dataset``, ``list_datasets``), plus dataset downloads."""

from . import toyworld  # noqa: F401
from .base import Dataset, Sample, get_dataset, list_datasets, register_dataset
from .cub import CubDataset, cub_attribute_phrase, cub_classname
from .download import (
    default_data_root,
    download_dataset,
    download_file,
    extract_archive,
    load_card,
    verify_checksum,
)
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset, folder_classname

__all__ = [
    "IMAGE_EXTENSIONS",
    "CubDataset",
    "Dataset",
    "ImageFolderDataset",
    "Sample",
    "cub_attribute_phrase",
    "cub_classname",
    "default_data_root",
    "download_dataset",
    "download_file",
    "extract_archive",
    "folder_classname",
    "get_dataset",
    "list_datasets",
    "load_card",
    "register_dataset",
    "verify_checksum",
]
