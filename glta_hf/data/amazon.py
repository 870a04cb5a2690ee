"""Amazon review data: the LC-Rec / LETTER JSON pair (``amazon-json``) and the raw 2018 JSON lines (``amazon-2018``).

Item text, both formats: ``"Title; description: ...; brand: ...; categories: ..."`` with empty fields left out;
an empty title falls back to ``"item <id>"`` and an item without any field to its title.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from ._build import Catalogue, Interactions, build_recdata, natural_order
from ._readers import (OptionalColumn, as_id, as_text, find_file, iter_json_lines, load_json, parse_float,
                       parse_timestamp, require_keys)

TEXT_FIELDS = (("description", "description"), ("brand", "brand"), ("categories", "categories"))


def _comma_list(value):
    """Categories as ``"A, B"`` whether given as ``"A,B"`` (LC-Rec) or ``["A", "B"]`` (Amazon 2018)."""
    parts = value if isinstance(value, list) else (value or "").split(",")
    return ", ".join(p.strip() for p in parts if p.strip())


def load_amazon_json(data_dir, *, prefix: str = None, **options):
    """``<Name>.inter.json`` (``{"user": [item, ...]}``, time-ordered) + ``<Name>.item.json`` found by glob.

    The list order is the time order, so ``split="loo"`` holds out each user's last item. ``prefix`` picks
    ``<prefix>.inter.json`` when a folder holds several pairs. Ids inside a JSON document have no line of their
    own: such errors name the file and the offending user / item key.
    """
    data_dir = Path(data_dir)
    pattern = f"{prefix}.inter.json" if prefix else "*.inter.json"
    inter_path = find_file(data_dir, [pattern], "*.inter.json interactions")
    stem = inter_path.name[: -len(".inter.json")]
    item_path = find_file(data_dir, [f"{stem}.item.json"], f"{stem}.item.json items")
    sequences = load_json(inter_path)
    if not isinstance(sequences, dict):
        raise DataFormatError("expected a JSON object {user: [item, ...]}", inter_path, 1)
    users, items = [], []
    for user, sequence in sequences.items():
        if not isinstance(sequence, list):
            raise DataFormatError(f"user {user!r}: expected a list of item ids, got {type(sequence).__name__}",
                                  inter_path)
        for item in sequence:
            items.append(as_id(item, f"user {user!r}: item id", inter_path, None))
        users.extend([user] * len(sequence))
    metadata = load_json(item_path)
    if not isinstance(metadata, dict):
        raise DataFormatError("expected a JSON object {item: {title, description, brand, categories}}", item_path, 1)
    catalogue = Catalogue()
    keys = list(metadata)
    for position in natural_order(keys):
        item = keys[position]
        entry = metadata[item]
        if not isinstance(entry, dict):
            raise DataFormatError(f"item {item!r}: expected an object, got {type(entry).__name__}", item_path)
        fields = [(label, as_text(entry.get(key), f"item {item!r}: {key}", item_path, None))
                  for label, key in TEXT_FIELDS]
        fields = [(label, _comma_list(value) if label == "categories" else value) for label, value in fields]
        catalogue.add(item, as_text(entry.get("title"), f"item {item!r}: title", item_path, None), fields)
    rows = Interactions(users=users, items=items, time_ordered=True)
    source = {"format": "amazon-json", "data_dir": str(data_dir), "files": f"{inter_path.name}, {item_path.name}"}
    return build_recdata(data_dir.name, rows, catalogue, options, data_dir=data_dir, source=source)


def load_amazon_2018(data_dir, *, reviews_file: str = None, meta_file: str = None, **options):
    """Raw Amazon 2018 JSON lines: one reviews file and one ``meta_*.json[.gz]`` (names overridable)."""
    data_dir = Path(data_dir)
    reviews_path = find_file(data_dir, ["*.json", "*.json.gz", "*.jsonl", "*.jsonl.gz"], "reviews",
                             exclude_prefix="meta_", explicit=reviews_file)
    meta_path = find_file(data_dir, ["meta_*.json", "meta_*.json.gz"], "meta_*.json metadata", explicit=meta_file)
    catalogue = Catalogue()
    for number, record in iter_json_lines(meta_path):
        require_keys(record, ["asin"], meta_path, number)
        category = as_text(record.get("category"), "category", meta_path, number)
        fields = [
            ("description", as_text(record.get("description"), "description", meta_path, number)),
            ("brand", as_text(record.get("brand"), "brand", meta_path, number)),
            ("categories", _comma_list(category)),
        ]
        catalogue.add(as_id(record["asin"], "asin", meta_path, number),
                      as_text(record.get("title"), "title", meta_path, number), fields)
    users, items = [], []
    ratings, times = OptionalColumn("overall", reviews_path), OptionalColumn("unixReviewTime", reviews_path)
    for number, record in iter_json_lines(reviews_path):
        require_keys(record, ["reviewerID", "asin"], reviews_path, number)
        users.append(as_id(record["reviewerID"], "reviewerID", reviews_path, number))
        items.append(as_id(record["asin"], "asin", reviews_path, number))
        rating, stamp = record.get("overall"), record.get("unixReviewTime")
        ratings.add(None if rating is None else parse_float(rating, "overall", reviews_path, number), number)
        times.add(None if stamp is None else parse_timestamp(stamp, "unixReviewTime", reviews_path, number), number)
    rows = Interactions(users=users, items=items, ratings=ratings.values(), timestamps=times.values())
    source = {"format": "amazon-2018", "data_dir": str(data_dir), "files": f"{reviews_path.name}, {meta_path.name}"}
    return build_recdata(data_dir.name, rows, catalogue, options, data_dir=data_dir, source=source)
