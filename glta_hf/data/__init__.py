"""Datasets: loaders for every supported format, splits, statistics. See ``schema.py`` for the shape."""
from .schema import TEST, TRAIN, VALIDATION, RecData, UserItemMatrix  # noqa: F401
