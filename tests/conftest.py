"""Shared fixtures: ``tiny`` is a small GLTA model on a random LLaMA, saved-LLM folder included (seconds to build)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A script of the repository (``training/align.py``, ``benchmarks/quality/carry_run.py``: files, not a
    package), imported from its path."""
    import importlib.util

    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass
class Tiny:
    """A fresh tiny GLTA model plus what built it; ``llm_dir`` is a saved copy of the LLM (its reference)."""

    model: Any
    tokenizer: Any
    llm_dir: Path
    user_embeddings: Any
    item_embeddings: Any
    num_users: int = 6
    num_items: int = 12
    num_slots: int = 4

    def batch(self, users=(0, 1), histories=((1, 2, 3), (4,)), targets=((5, 6), (7,)), padding_side="left", **prompt_kw):
        """An encoded user-item batch (forward kwargs, with labels when targets are given)."""
        from glta_hf.prompts import collate_prompts, encode_prompt, user_item_prompt

        cfg = self.model.prompt_config
        encoded = [
            encode_prompt(self.tokenizer, user_item_prompt(u, h, cfg, targets=t, **prompt_kw), cfg)
            for u, h, t in zip(users, histories, targets)
        ]
        return collate_prompts(encoded, self.tokenizer.pad_token_id, cfg.num_slots, padding_side=padding_side)


def build_tiny(tmp_path: Path, head: str = "linear", projector: str = "linear", seed: int = 0, prompt=None,
               **kwargs) -> Tiny:
    """Build a :class:`Tiny`; ``prompt`` entries override the defaults (L=4, H=5), ``kwargs`` go to the config."""
    import torch

    from glta_hf import GLTAForRecommendation
    from glta_hf.testing import tiny_llama

    causal, tokenizer = tiny_llama(seed=seed)
    llm_dir = tmp_path / "tiny-llm"
    causal.save_pretrained(llm_dir)
    gen = torch.Generator().manual_seed(seed)
    users = torch.randn(6, 8, generator=gen)
    items = torch.randn(12, 8, generator=gen)
    torch.manual_seed(seed)
    model = GLTAForRecommendation.from_components(
        causal.model,
        tokenizer,
        users,
        items,
        item_ids=[f"i{j}" for j in range(12)],
        item_titles=[f"Item {j}" for j in range(12)],
        llm_name_or_path=str(llm_dir),
        prompt={"num_slots": 4, "max_history": 5, "max_length": 512, **(prompt or {})},
        head=head,
        projector=projector,
        **kwargs,
    )
    model.attach_user_context(
        user_ids=[f"u{j}" for j in range(6)],
        histories=[[0, 1], [2, 3, 4], [5], [6, 7], [8], [9, 10]],
        profiles=["Likes animation.", None, "Likes crime films.", None, None, None],
        predictions=["Will want comedies.", None, None, None, None, None],
    )
    return Tiny(model=model, tokenizer=tokenizer, llm_dir=llm_dir, user_embeddings=users, item_embeddings=items)


@pytest.fixture
def tiny(tmp_path) -> Tiny:
    """A tiny GLTA model (random 2-layer LLaMA, 6 users, 12 items, d=8, L=4) with user context attached."""
    return build_tiny(tmp_path)


def flip_tensor_byte(path: Path, tensor: str) -> None:
    """Flip one data byte of ``tensor`` in a safetensors file (its header still parses): a damaged entry."""
    import json
    import struct

    raw = bytearray(path.read_bytes())
    header_length = struct.unpack("<Q", raw[:8])[0]
    begin, end = json.loads(raw[8:8 + header_length])[tensor]["data_offsets"]
    raw[8 + header_length + (begin + end) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
