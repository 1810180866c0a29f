"""zsclip: zero-shot image classification with CLIP-family models on cached embedding stores.

The data flows one way: dataset → run context (image stores by role) → method (prompt set or fitted head)
→ scorer → metrics, explanations and a record.

    >>> import zsclip
    >>> run = zsclip.classify("cub", "descriptions", dataset_root="~/data/CUB_200_2011")
    >>> run.metrics["top1"], run.explain(0).summary()

or piece by piece: ``get_dataset`` → ``load_model`` → ``RunContext`` → ``make_method(name, **params)`` →
``build(ctx)`` / ``fit(ctx)`` → ``ZeroShotClassifier`` → ``evaluate``.
"""

from ._version import __version__
from .context import RunContext, SplitRoleError
from .datasets import Dataset, Sample, get_dataset, list_datasets, register_dataset
from .errors import DatasetError, DescriptorFileError, StoreMismatchError, WeightsNotFoundError, ZsclipError
from .heads import ClassHead, wise_ft
from .llm import BudgetExceeded, LLMClient, LLMError
from .methods import (
    DDS,
    ClassNamePrompts,
    CuplPrompts,
    DescriptorPrompts,
    Method,
    ParameterError,
    WafflePrompts,
    list_methods,
    make_method,
    register_method,
)
from .models import Encoder, load_model
from .pipeline import ClassificationRun, ZeroShotClassifier, classify, classify_from_record
from .prompts import PromptSet, descriptor_phrase, load_templates, read_descriptor_file
from .records import Record
from .scoring import Explanation, Scorer, evaluate
from .stores import ImageStore, TextEmbeddingCache

__all__ = [
    "__version__",
    "DDS", "BudgetExceeded", "ClassHead", "ClassNamePrompts", "ClassificationRun", "CuplPrompts", "Dataset",
    "DatasetError", "DescriptorFileError", "DescriptorPrompts", "Encoder", "Explanation", "ImageStore", "LLMClient",
    "LLMError", "Method", "ParameterError", "PromptSet", "Record", "RunContext", "Sample", "Scorer",
    "SplitRoleError", "StoreMismatchError", "TextEmbeddingCache", "WafflePrompts", "WeightsNotFoundError",
    "ZeroShotClassifier", "ZsclipError",
    "classify", "classify_from_record", "descriptor_phrase", "evaluate", "get_dataset", "list_datasets",
    "list_methods", "load_model", "load_templates", "make_method", "read_descriptor_file", "register_dataset",
    "register_method", "wise_ft",
]
