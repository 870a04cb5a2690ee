"""The package's shared vocabularies, in a module with no heavy import.

The CLI validates flags against them at parse time without loading torch, and the model imports them from here,
so each list has one owner. Copied with the remote code (the model's modules import it relatively).
"""
from __future__ import annotations

#: How the frozen LLM is loaded (``GLTAConfig.quantization``, ``glta_hf.backbone.load_llm``, every ``--quantization``).
QUANTIZATIONS = ("none", "bnb-4bit", "gptq")
#: How the user-item stage draws a sample's targets (:class:`glta_hf.alignment_data.UserItemDataset`).
TARGET_POLICIES = ("disjoint", "all")
