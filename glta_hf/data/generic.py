"""The ``generic`` format: any interaction log plus an item-text table.

Files (in ``data_dir``, or named with ``interactions_file=`` / ``items_file=``, relative to ``data_dir``):

* ``interactions.csv`` / ``.tsv`` / ``.parquet`` -- columns ``user_id``, ``item_id`` and optionally ``rating``
  (a number) and ``timestamp`` (Unix seconds or an ISO 8601 date). Text files need a header row; the delimiter
  is sniffed from it (``, \\t ; |``) unless ``sep=`` is given. Ids are strings (kept as written).
* ``items.csv`` / ``.tsv`` / ``.parquet`` / ``.jsonl`` -- columns ``item_id``, ``title`` and optionally ``text``
  (the full item text the prompts use; empty -> the title; empty title -> ``"item <id>"``). Optional: without it
  every item's text is ``"item <id>"`` (logged). Items without interactions are dropped.

For Parquet files the ``line`` of a :class:`~glta_hf.errors.DataFormatError` is the 1-based row.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import DataFormatError
from ._build import Catalogue, Interactions, build_recdata
from ._readers import (OptionalColumn, as_id, column_positions, find_file, iter_csv_rows, iter_json_lines,
                       parse_float, parse_timestamp)
from .goodreads import parse_date

logger = logging.getLogger("glta_hf.data")

INTERACTION_FILES = ("interactions.csv", "interactions.tsv", "interactions.parquet")
ITEM_FILES = ("items.csv", "items.tsv", "items.parquet", "items.jsonl")


def _parquet_records(path: Path, required: Sequence[str], optional: Sequence[str]) -> Iterator[Tuple[int, Dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataFormatError(f"not a readable Parquet file ({err})", path) from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataFormatError(f"missing column(s) {missing}; the file has {table.column_names}", path)
    names = [c for c in list(required) + list(optional) if c in table.column_names]
    columns = {c: table.column(c).to_pylist() for c in names}
    for row in range(table.num_rows):
        yield row + 1, {c: columns[c][row] for c in names}


def _records(path: Path, required: Sequence[str], optional: Sequence[str], sep: Optional[str]
             ) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line or row, {column: value}) from a CSV/TSV, Parquet or JSONL file; missing columns are errors."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _parquet_records(path, required, optional)
    elif name.endswith((".jsonl", ".jsonl.gz")):
        for number, record in iter_json_lines(path):
            missing = [c for c in required if c not in record]
            if missing:
                raise DataFormatError(f"missing field(s) {missing}", path, number)
            yield number, {c: record.get(c) for c in list(required) + list(optional)}
    else:
        header, rows = iter_csv_rows(path, sep=("\t" if name.endswith(".tsv") and sep is None else sep))
        cols = column_positions(header, required, optional, path)
        for number, fields in rows:
            yield number, {c: (fields[i] if fields[i].strip() else None) for c, i in cols.items()}


def _timestamp(value, path, number) -> int:
    """Unix seconds from a number, a numeric string, an ISO 8601 string or a Parquet timestamp."""
    if isinstance(value, datetime.datetime):
        value = value.isoformat()
    if isinstance(value, str):
        try:
            return parse_timestamp(value, "timestamp", path, number)
        except DataFormatError:
            return parse_date(value, "timestamp", path, number)
    return parse_date(value, "timestamp", path, number)


def load_generic(data_dir, *, interactions_file: str = None, items_file: str = None, sep: str = None,
                 name: str = None, **options):
    """Load a generic interaction log and item texts (format in the module docstring)."""
    data_dir = Path(data_dir)
    inter_path = find_file(data_dir, INTERACTION_FILES, "interactions", explicit=interactions_file)
    items_path = find_file(data_dir, ITEM_FILES, "items", explicit=items_file, required=False)
    catalogue = Catalogue()
    if items_path is None:
        logger.warning("generic: no item file in %s (looked for %s); item texts are 'item <id>'", data_dir, ITEM_FILES)
    else:
        for number, record in _records(items_path, ["item_id", "title"], ["text"], sep):
            text = record.get("text")
            if text is not None and not isinstance(text, str):
                raise DataFormatError(f"text must be a string, got {text!r}", items_path, number)
            title = record.get("title")
            if title is not None and not isinstance(title, str):
                raise DataFormatError(f"title must be a string, got {title!r}", items_path, number)
            catalogue.add(as_id(record["item_id"], "item_id", items_path, number), title, text=text)
    users: List[str] = []
    items: List[str] = []
    ratings, times = OptionalColumn("rating", inter_path), OptionalColumn("timestamp", inter_path)
    for number, record in _records(inter_path, ["user_id", "item_id"], ["rating", "timestamp"], sep):
        users.append(as_id(record["user_id"], "user_id", inter_path, number))
        items.append(as_id(record["item_id"], "item_id", inter_path, number))
        rating, stamp = record.get("rating"), record.get("timestamp")
        ratings.add(None if rating is None else parse_float(rating, "rating", inter_path, number), number)
        times.add(None if stamp is None else _timestamp(stamp, inter_path, number), number)
    rows = Interactions(users=users, items=items, ratings=ratings.values(), timestamps=times.values())
    files = inter_path.name + (f", {items_path.name}" if items_path else "")
    source = {"format": "generic", "data_dir": str(data_dir), "files": files}
    return build_recdata(name or data_dir.name, rows, catalogue, options, data_dir=data_dir, source=source)
