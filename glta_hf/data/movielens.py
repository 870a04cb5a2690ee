"""MovieLens loaders: ml-1m (the CoLaKG split), ml-100k and ml-latest-small (raw GroupLens files).

Every movie's text is the paper's MovieLens description, ``"Title (Year); genres: A, B"``
(``"unknown"`` / ``"(no genres listed)"`` genres are left out; no genre leaves just the title). ml-1m can use the
CoLaKG LLM-written descriptions instead (``item_text="long"``); ml-latest-small can append its free-text tags
(``with_tags=True``: ``"; tags: a, b"``, the ``max_tags`` most frequent, case-insensitively unique).
"""
from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..errors import DataFormatError
from ._build import Catalogue, Interactions, build_recdata
from ._readers import (column_positions, iter_csv_rows, iter_lines, load_json, parse_float, parse_int,
                       parse_timestamp, split_fields)
from ..errors import DatasetOptionError

logger = logging.getLogger("glta_hf.data")
NO_GENRE = {"", "unknown", "(no genres listed)"}


def movie_fields(genres: List[str]) -> List[Tuple[str, str]]:
    return [("genres", ", ".join(g for g in genres if g not in NO_GENRE))]


# ml-1m ----------------------------------------------------------------------------------------------------------
def _read_id_map(path, what: str, required: bool = True) -> Dict[int, int]:
    """``original_id index`` lines -> {index: original id}; indices must be 0..n-1 without repeats."""
    path = Path(path)
    if not required and not path.exists():
        return {}
    mapping: Dict[int, int] = {}
    seen = set()
    for number, line in iter_lines(path):
        original, index = _two_ints(line, what, path, number)
        if index in mapping:
            raise DataFormatError(f"{what} index {index} appears twice", path, number)
        if original in seen:
            raise DataFormatError(f"original {what} id {original} appears twice", path, number)
        seen.add(original)
        mapping[index] = original
    if not mapping:
        raise DataFormatError(f"no {what} entries", path)
    if sorted(mapping) != list(range(len(mapping))):
        missing = sorted(set(range(len(mapping))) - set(mapping))[:5]
        raise DataFormatError(f"{what} indices must be 0..{len(mapping) - 1}; missing e.g. {missing}", path)
    return mapping


def _two_ints(line: str, what: str, path, number: int) -> Tuple[int, int]:
    fields = line.split()
    if len(fields) != 2:
        raise DataFormatError(f"expected 'original_{what}_id {what}_idx' (2 whitespace-separated fields), got "
                              f"{len(fields)}", path, number)
    original = parse_int(fields[0], f"original {what} id", path, number)
    index = parse_int(fields[1], f"{what} index", path, number)
    if not (0 <= index < 2**62 and -(2**62) < original < 2**62):
        raise DataFormatError(f"{what} id or index out of range: {line.strip()!r}", path, number)
    return original, index


def _read_user_lines(path, num_items: int, num_users: int) -> Tuple[Dict[int, int], List[np.ndarray], List[np.ndarray]]:
    """LightGCN-format ``user_idx item_idx ...`` lines -> (user -> line, user arrays, item arrays)."""
    first_line: Dict[int, int] = {}
    users, items = [], []
    for number, line in iter_lines(path):
        fields = line.split()
        try:
            values = np.array(fields, dtype=np.int64)
        except (ValueError, OverflowError):
            bad = next((f for f in fields if not f.lstrip("-").isdigit()), fields[0])
            raise DataFormatError(f"expected integer indices 'user_idx item_idx ...', got {bad!r}", path, number) from None
        user, line_items = int(values[0]), values[1:]
        if not 0 <= user < num_users:
            raise DataFormatError(f"user index {user} is outside 0..{num_users - 1} (user_map.txt)", path, number)
        outside = line_items[(line_items < 0) | (line_items >= num_items)]
        if len(outside):
            raise DataFormatError(f"item index {int(outside[0])} is outside the catalogue 0..{num_items - 1} "
                                  "(item_map.txt)", path, number)
        first_line.setdefault(user, number)
        users.append(np.full(len(line_items), user, dtype=np.int64))
        items.append(line_items)
    return first_line, users, items


def load_ml1m(data_dir, *, item_text: str = "short", **options):
    """MovieLens-1M as preprocessed by CoLaKG (``train.txt``/``test.txt``, ``item_map.txt``, ``movies.dat``).

    Item row ``i`` is the given ``item_idx`` ``i`` and user row ``u`` the given ``user_idx`` ``u`` (unless filtering
    drops some); ``item_id`` is the original MovieID and user ids come from ``user_map.txt`` (the index itself when
    that file is absent). A test line whose user has no train line, or any index outside the maps, is an error.
    """
    data_dir = Path(data_dir)
    if item_text not in ("short", "long"):
        raise DatasetOptionError(f"ml-1m: item_text must be 'short' or 'long', got {item_text!r}")
    item_map = _read_id_map(data_dir / "item_map.txt", "item")
    user_map_path = data_dir / "user_map.txt"
    user_map = _read_id_map(user_map_path, "user", required=False)
    train_first, train_users, train_items = _read_user_lines(data_dir / "train.txt", len(item_map),
                                                             len(user_map) if user_map else 2**62)
    test_first, test_users, test_items = _read_user_lines(data_dir / "test.txt", len(item_map),
                                                          len(user_map) if user_map else 2**62)
    if not train_first:
        raise DataFormatError("no user lines", data_dir / "train.txt")
    for user, number in test_first.items():
        if user not in train_first:
            raise DataFormatError(f"user {user} has test interactions but no line in train.txt", data_dir / "test.txt",
                                  number)
    # without user_map.txt a user's id is its index
    user_ids = np.array([user_map[u] for u in range(len(user_map))] if user_map else sorted(train_first), dtype=np.int64)
    movie_ids = np.array([item_map[i] for i in range(len(item_map))], dtype=np.int64)

    movies: Dict[int, Tuple[str, List[str]]] = {}
    movies_path = data_dir / "movies.dat"
    for number, line in iter_lines(movies_path, encoding="latin-1"):
        movie, title, genres = split_fields(line, "::", 3, movies_path, number)
        movies[parse_int(movie, "MovieID", movies_path, number)] = (title, genres.split("|"))
    long_texts: Dict[str, str] = {}
    files = ["train.txt", "test.txt", "item_map.txt", "movies.dat"] + (["user_map.txt"] if user_map else [])
    if item_text == "long":
        long_path = data_dir / "llm_response_item.json"
        long_texts = load_json(long_path)
        if not isinstance(long_texts, dict) or not all(isinstance(v, str) for v in long_texts.values()):
            raise DataFormatError("expected a JSON object {movie_id: description}", long_path)
        files.append(long_path.name)
    catalogue = Catalogue()
    for movie in movie_ids.tolist():
        title, genres = movies.get(movie, ("", []))
        catalogue.add(movie, title, movie_fields(genres), text=long_texts.get(str(movie)))
    if item_text == "long":
        missing = sum(1 for movie in movie_ids.tolist() if not (long_texts.get(str(movie)) or "").strip())
        if missing:
            logger.warning("ml-1m: %d movies have no long description; they use the short one", missing)

    all_users = np.concatenate(train_users + test_users) if train_users else np.zeros(0, dtype=np.int64)
    all_items = np.concatenate(train_items + test_items) if train_items else np.zeros(0, dtype=np.int64)
    num_train = sum(len(a) for a in train_users)
    is_test = np.arange(len(all_users)) >= num_train
    external_users = user_ids[all_users] if user_map else all_users
    rows = Interactions(users=external_users, items=movie_ids[all_items], is_test=is_test)
    source = {"format": "ml-1m", "data_dir": str(data_dir), "files": ", ".join(files), "item_text": item_text}
    return build_recdata("ml-1m", rows, catalogue, options, data_dir=data_dir, source=source, default_split="fixed",
                         fixed_label="fixed (CoLaKG train.txt/test.txt)", user_order=[str(u) for u in user_ids])


# ml-100k --------------------------------------------------------------------------------------------------------
def load_ml100k(data_dir, **options):
    """MovieLens-100K raw files: ``u.data`` (tab-separated user, item, rating, timestamp), ``u.item``, ``u.genre``."""
    data_dir = Path(data_dir)
    genre_path = data_dir / "u.genre"
    genres: Dict[int, str] = {}
    for number, line in iter_lines(genre_path, encoding="latin-1"):
        name, index = split_fields(line, "|", 2, genre_path, number)
        genres[parse_int(index, "genre index", genre_path, number)] = name
    if sorted(genres) != list(range(len(genres))):
        raise DataFormatError(f"genre indices must be 0..{len(genres) - 1}", genre_path)
    item_path = data_dir / "u.item"
    catalogue = Catalogue()
    for number, line in iter_lines(item_path, encoding="latin-1"):
        fields = split_fields(line, "|", 5 + len(genres), item_path, number)
        movie = parse_int(fields[0], "movie id", item_path, number)
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataFormatError(f"genre flags must be 0 or 1, got {flags}", item_path, number)
        catalogue.add(movie, fields[1], movie_fields([genres[g] for g, f in enumerate(flags) if f == "1"]))
    users, items, ratings, times = [], [], [], []
    data_path = data_dir / "u.data"
    for number, line in iter_lines(data_path):
        user, item, rating, stamp = split_fields(line, "\t", 4, data_path, number)
        users.append(parse_int(user, "user id", data_path, number))
        items.append(parse_int(item, "item id", data_path, number))
        ratings.append(parse_float(rating, "rating", data_path, number))
        times.append(parse_timestamp(stamp, "timestamp", data_path, number))
    rows = Interactions(users=users, items=[str(i) for i in items], ratings=ratings, timestamps=times)
    source = {"format": "ml-100k", "data_dir": str(data_dir), "files": "u.data, u.item, u.genre"}
    return build_recdata("ml-100k", rows, catalogue, options, data_dir=data_dir, source=source)


# ml-latest-small ------------------------------------------------------------------------------------------------
def _read_tags(path, max_tags: int) -> Dict[str, List[str]]:
    """movieId -> its ``max_tags`` most frequent tags (case-insensitively unique, ties by first appearance)."""
    header, records = iter_csv_rows(path, sep=",")
    cols = column_positions(header, ["movieId", "tag"], [], path)
    counts: Dict[str, "collections.Counter[str]"] = collections.defaultdict(collections.Counter)
    spelling: Dict[Tuple[str, str], str] = {}
    for number, fields in records:
        movie = str(parse_int(fields[cols["movieId"]], "movieId", path, number))
        tag = " ".join(fields[cols["tag"]].split())
        if tag:
            key = tag.lower()
            spelling.setdefault((movie, key), tag)
            counts[movie][key] += 1
    return {m: [spelling[(m, k)] for k, _ in c.most_common(max_tags)] for m, c in counts.items()}


def load_ml_latest_small(data_dir, *, with_tags: bool = False, max_tags: int = 10, **options):
    """MovieLens latest-small: ``ratings.csv``, ``movies.csv`` (quoted titles), optional ``tags.csv``."""
    data_dir = Path(data_dir)
    if isinstance(max_tags, bool) or not isinstance(max_tags, int) or max_tags < 1:
        raise DatasetOptionError(f"ml-latest-small: max_tags must be a positive integer, got {max_tags!r}")
    tags = _read_tags(data_dir / "tags.csv", max_tags) if with_tags else {}
    movies_path = data_dir / "movies.csv"
    header, records = iter_csv_rows(movies_path, sep=",")
    cols = column_positions(header, ["movieId", "title", "genres"], [], movies_path)
    catalogue = Catalogue()
    for number, fields in records:
        movie = str(parse_int(fields[cols["movieId"]], "movieId", movies_path, number))
        extra = [("tags", ", ".join(tags.get(movie, [])))] if with_tags else []
        catalogue.add(movie, fields[cols["title"]], movie_fields(fields[cols["genres"]].split("|")) + extra)
    ratings_path = data_dir / "ratings.csv"
    header, records = iter_csv_rows(ratings_path, sep=",")
    cols = column_positions(header, ["userId", "movieId", "rating", "timestamp"], [], ratings_path)
    users, items, ratings, times = [], [], [], []
    for number, fields in records:
        users.append(parse_int(fields[cols["userId"]], "userId", ratings_path, number))
        items.append(str(parse_int(fields[cols["movieId"]], "movieId", ratings_path, number)))
        ratings.append(parse_float(fields[cols["rating"]], "rating", ratings_path, number))
        times.append(parse_timestamp(fields[cols["timestamp"]], "timestamp", ratings_path, number))
    rows = Interactions(users=users, items=items, ratings=ratings, timestamps=times)
    files = "ratings.csv, movies.csv" + (", tags.csv" if with_tags else "")
    source = {"format": "ml-latest-small", "data_dir": str(data_dir), "files": files, "with_tags": str(with_tags)}
    return build_recdata("ml-latest-small", rows, catalogue, options, data_dir=data_dir, source=source)
