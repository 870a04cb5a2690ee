"""The package's shared vocabularies, in a module with no heavy import.

The CLI validates flags against them at parse time without loading torch, and the model imports them from here,
so each list has one owner. Copied with the remote code (the model's modules import it relatively).
"""
from __future__ import annotations

from enum import Enum

#: How the frozen LLM is loaded (``GLTAConfig.quantization``, ``glta_hf.backbone.load_llm``, every ``--quantization``).
QUANTIZATIONS = ("none", "bnb-4bit", "gptq")
#: How the user-item stage draws a sample's targets (:class:`glta_hf.alignment_data.UserItemDataset`).
TARGET_POLICIES = ("disjoint", "all", "held_out")


class Stage(str, Enum):
    """An alignment stage (paper 3.1 / 3.2) or ``all`` (item then user in one launch): the one type every module
    compares stages with. A ``str`` subclass, so records, paths and YAML values stay the plain names."""

    ITEM = "item"
    USER = "user"
    ALL = "all"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)


#: the two alignment stages, in training order
ALIGNMENT_STAGES = (Stage.ITEM, Stage.USER)
