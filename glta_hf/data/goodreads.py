"""Goodreads (UCSD Book Graph) JSON lines: ``*interactions*.json[.gz]`` + ``*books*.json[.gz]``.

Interactions need ``user_id`` and ``book_id``; ``rating`` and the time (``timestamp`` as Unix seconds, or
``date_added`` like ``"Sun Jul 30 07:44:10 -0700 2017"`` or ISO 8601) are used when every line has them.
``only_read=True`` keeps the lines with ``is_read`` true. Book text: ``"Title; description: ..."``.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from ..errors import DataFormatError
from ._build import Catalogue, Interactions, build_recdata
from ._readers import (OptionalColumn, as_id, as_text, find_file, iter_json_lines, parse_float, parse_timestamp,
                       require_keys)

GOODREADS_DATE = "%a %b %d %H:%M:%S %z %Y"


def parse_date(value, what: str, path, line: int) -> int:
    """Unix seconds from a Goodreads date string, an ISO 8601 date or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return parse_timestamp(value, what, path, line)
    if not isinstance(value, str):
        raise DataFormatError(f"{what} must be a date string, got {value!r}", path, line)
    for parse in (lambda s: datetime.datetime.strptime(s, GOODREADS_DATE), datetime.datetime.fromisoformat):
        try:
            moment = parse(value.strip())
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        try:
            return int(moment.timestamp())
        except (OverflowError, OSError, ValueError):
            break
    raise DataFormatError(f"{what} is not a date: {value!r}", path, line)


def load_goodreads(data_dir, *, interactions_file: str = None, books_file: str = None, only_read: bool = False,
                   **options):
    """Load Goodreads interactions and book texts (file names overridable; see the module docstring)."""
    data_dir = Path(data_dir)
    inter_path = find_file(data_dir, ["*interactions*.json", "*interactions*.json.gz"], "interactions",
                           explicit=interactions_file)
    books_path = find_file(data_dir, ["*books*.json", "*books*.json.gz"], "books", explicit=books_file)
    catalogue = Catalogue()
    for number, record in iter_json_lines(books_path):
        require_keys(record, ["book_id"], books_path, number)
        catalogue.add(as_id(record["book_id"], "book_id", books_path, number),
                      as_text(record.get("title"), "title", books_path, number),
                      [("description", as_text(record.get("description"), "description", books_path, number))])
    users, items = [], []
    ratings, times = OptionalColumn("rating", inter_path), OptionalColumn("timestamp/date_added", inter_path)
    for number, record in iter_json_lines(inter_path):
        require_keys(record, ["user_id", "book_id"], inter_path, number)
        is_read = record.get("is_read", True)
        if not isinstance(is_read, (bool, int)):
            raise DataFormatError(f"is_read must be true/false, got {is_read!r}", inter_path, number)
        if only_read and not is_read:
            continue
        users.append(as_id(record["user_id"], "user_id", inter_path, number))
        items.append(as_id(record["book_id"], "book_id", inter_path, number))
        rating = record.get("rating")
        ratings.add(None if rating is None else parse_float(rating, "rating", inter_path, number), number)
        if record.get("timestamp") is not None:
            times.add(parse_timestamp(record["timestamp"], "timestamp", inter_path, number), number)
        elif record.get("date_added") not in (None, ""):
            times.add(parse_date(record["date_added"], "date_added", inter_path, number), number)
        else:
            times.add(None, number)
    rows = Interactions(users=users, items=items, ratings=ratings.values(), timestamps=times.values())
    source = {"format": "goodreads", "data_dir": str(data_dir), "files": f"{inter_path.name}, {books_path.name}",
              "only_read": str(only_read)}
    return build_recdata(data_dir.name, rows, catalogue, options, data_dir=data_dir, source=source)
