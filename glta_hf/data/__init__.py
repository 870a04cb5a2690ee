"""Datasets: loaders for every supported format, splits, statistics. See ``schema.py`` for the shape."""
from .loaders import DATASETS, embedded_dataset_dir, load_dataset  # noqa: F401
from .schema import TEST, TRAIN, VALIDATION, RecData, UserItemMatrix  # noqa: F401
from .split import carve_validation  # noqa: F401
