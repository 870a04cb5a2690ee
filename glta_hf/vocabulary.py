"""The package's shared vocabularies, in a module with no heavy import.

The CLI validates flags against them at parse time without loading torch, and the model imports them from here,
so each list has one owner. Copied with the remote code (the model's modules import it relatively).
"""
from __future__ import annotations

#: The decodings :meth:`GLTAForRecommendation.rank` accepts.
DECODINGS = ("first_k", "first_logit", "autoregressive", "all_slots")
#: Decodings that yield at most one item per slot (k <= num_slots).
SLOT_LIMITED_DECODINGS = ("first_k", "autoregressive")
#: The graph models :func:`glta_hf.graph.build_model` accepts (the baselines and the node-embedding pretraining).
GRAPH_MODELS = ("pop", "mf", "lightgcn", "lightgcn+", "lightgcn_ce")
#: How the user-item stage draws a sample's targets (:class:`glta_hf.alignment_data.UserItemDataset`).
TARGET_POLICIES = ("disjoint", "all")
