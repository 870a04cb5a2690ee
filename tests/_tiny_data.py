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

