"""zsclip: zero-shot image classification with CLIP-family models on cached embedding stores.

The data flows one way: dataset → image store → prompt set → scorer → metrics / explanations.

    >>> import zsclip
    >>> run = zsclip.classify("cub", "descriptions", dataset_root="~/data/CUB_200_2011")
    >>> run.metrics["top1"], run.explain(0).summary()

or piece by piece: ``get_dataset`` → ``load_model`` → ``ImageStore.build`` → a method's ``build`` →
``ZeroShotClassifier`` → ``evaluate``.
"""

from ._version import __version__
from .datasets import Dataset, Sample, get_dataset, list_datasets, register_dataset
from .errors import DatasetError, DescriptorFileError, StoreMismatchError, WeightsNotFoundError, ZsclipError
from .llm import BudgetExceeded, LLMClient, LLMError
from .methods import ClassNamePrompts, CuplPrompts, DescriptorPrompts, WafflePrompts, get_method
from .models import Encoder, load_model
from .pipeline import ClassificationRun, ZeroShotClassifier, classify
from .prompts import PromptSet, descriptor_phrase, load_templates, read_descriptor_file
from .scoring import Explanation, Scorer, evaluate
from .stores import ImageStore, TextEmbeddingCache

__all__ = [
    "__version__",
    "BudgetExceeded", "ClassNamePrompts", "ClassificationRun", "CuplPrompts", "Dataset", "DatasetError",
    "DescriptorFileError", "DescriptorPrompts", "Encoder", "Explanation", "ImageStore", "LLMClient", "LLMError",
    "PromptSet", "Sample", "Scorer", "StoreMismatchError", "TextEmbeddingCache", "WafflePrompts",
    "WeightsNotFoundError", "ZeroShotClassifier", "ZsclipError",
    "classify", "descriptor_phrase", "evaluate", "get_dataset", "get_method", "list_datasets", "load_model",
    "load_templates", "read_descriptor_file", "register_dataset",
]
