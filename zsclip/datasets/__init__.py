"""Dataset loaders and their registry (``get_dataset``, ``list_datasets``)."""

from .base import Dataset, Sample, get_dataset, list_datasets, register_dataset

__all__ = ["Dataset", "Sample", "get_dataset", "list_datasets", "register_dataset"]
