"""Shared helpers of the training tests: a tiny MovieLens-format dataset and a tiny LLaMA saved to a folder.

The dataset has cluster structure (each user group likes its own block of movies, genres name the block) so a
model that reads the graph signal can overfit it; the LLM is :func:`glta_hf.testing.tiny_llama`, saved so the
training scripts load it by path exactly like a real backbone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

GENRES = ["Comedy", "Drama", "Horror", "Animation"]


def write_tiny_movielens(folder, num_users: int = 24, num_items: int = 40, per_user: int = 8, seed: int = 0) -> Path:
    """ratings.csv + movies.csv in the ml-latest-small format (load with ``load_dataset("ml-latest-small", folder)``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = len(GENRES)
    block = num_items // groups
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(num_users):
        g = u % groups
        items = rng.choice(np.arange(g * block, (g + 1) * block), size=min(per_user, block), replace=False)
        for t, i in enumerate(items):
            rows.append(f"{u + 1},{i + 1},4.0,{1000 + 10 * u + t}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    movies = ["movieId,title,genres"]
    for i in range(num_items):
        movies.append(f"{i + 1},Movie {i + 1} ({1990 + i % 20}),{GENRES[min(i // block, groups - 1)]}")
    (folder / "movies.csv").write_text("\n".join(movies) + "\n", encoding="utf-8")
    return folder


def save_tiny_llama(folder, seed: int = 0) -> Path:
    """A random tiny ``LlamaForCausalLM`` + tokenizer written with ``save_pretrained`` (safetensors)."""
    from glta_hf.testing import tiny_llama

    folder = Path(folder)
    model, tokenizer = tiny_llama(seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder



def tiny_model_on_movielens(tmp_path, **options):
    """A tiny GLTA model over :func:`write_tiny_movielens` data (16 users, 24 items; random 8-d graph tables, 5 slots,
    the train histories attached), its LLM saved under ``tmp_path / "llm"``. ``options``: further
    ``GLTAForRecommendation.from_components`` keywords. Returns ``(model, data, full, data_dir, generator)``: the
    seeded generator that drew the tables, for whatever else a test draws (refit tables)."""
    import torch

    from glta_hf import GLTAForRecommendation
    from glta_hf.alignment_data import prepare_data, user_histories
    from glta_hf.testing import tiny_llama

    folder = write_tiny_movielens(Path(tmp_path) / "ds", num_users=16, num_items=24, per_user=6)
    data, full = prepare_data("ml-latest-small", folder)
    llm, tok = tiny_llama(seed=0)
    llm.save_pretrained(Path(tmp_path) / "llm")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GLTAForRecommendation.from_components(
        llm.model, tok, torch.randn(data.num_users, 8, generator=gen), torch.randn(data.num_items, 8, generator=gen),
        item_ids=list(data.item_ids), llm_name_or_path=str(Path(tmp_path) / "llm"), head="factorized",
        prompt={"num_slots": 5, "max_history": 4, "max_length": 512}, **options)
    histories, _ = user_histories(data, "train")
    model.attach_user_context(user_ids=list(data.user_ids), histories=histories)
    return model, data, full, folder, gen
