"""Tiny example datasets in every supported format, all holding the same interactions.

They document each format by example (``write_example("generic", folder)`` shows what the generic loader
expects) and are the fixtures of the data tests: because every format encodes the same data, every loader
must produce the same users, items and interactions from them.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Dict, List, Tuple

#: (user, item, rating, unix time); (1, 2) appears twice -- the later copy (rating 4) is the one kept
RATINGS: List[Tuple[int, int, float, int]] = [
    (1, 1, 5.0, 100), (1, 2, 3.0, 101), (1, 3, 4.0, 102), (1, 4, 2.0, 103), (1, 2, 4.0, 104),
    (2, 2, 4.0, 200), (2, 3, 5.0, 201), (2, 5, 1.0, 202),
    (3, 1, 4.0, 300), (3, 4, 5.0, 301), (3, 5, 3.0, 302), (3, 6, 4.0, 303),
    (4, 6, 5.0, 400), (4, 1, 2.0, 401), (4, 2, 4.0, 402),
]
#: movie id -> (title, genres); 7 has no interactions (dropped by every loader), 2 needs CSV quoting and Latin-1
MOVIES: Dict[int, Tuple[str, List[str]]] = {
    1: ("Toy Story (1995)", ["Animation", "Comedy"]),
    2: ("Café, Society (2016)", ["Drama"]),
    3: ("Heat (1995)", ["Action", "Crime"]),
    4: ("Alien (1979)", ["Horror", "Sci-Fi"]),
    5: ("Nobody (2021)", []),
    6: ("Up (2009)", ["Animation"]),
    7: ("Unwatched (2000)", ["Drama"]),
}
#: the expected item text of each movie ("Title (Year); genres: ..." -- no genre leaves the title)
MOVIE_TEXTS = {m: t + (f"; genres: {', '.join(g)}" if g else "") for m, (t, g) in MOVIES.items()}
#: product metadata for the non-movie formats: 5 has no description, 6 no title
PRODUCTS: Dict[int, Dict[str, str]] = {
    m: {"title": "" if m == 6 else t, "description": "" if m == 5 else f"About {t}.", "brand": "Acme",
        "categories": "Tools,Lab"}
    for m, (t, _) in MOVIES.items()
}
NUM_USERS, NUM_ITEMS, NUM_INTERACTIONS = 4, 6, 14  # after deduplication, without item 7
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]
FORMATS = ("ml-1m", "ml-100k", "ml-latest-small", "amazon-json", "amazon-2018", "goodreads", "generic")


def _unique_rows():
    latest = {}
    for user, item, rating, stamp in RATINGS:
        latest[(user, item)] = (user, item, rating, stamp)
    return sorted(latest.values(), key=lambda r: (r[0], r[3]))


def _json_lines(path: Path, records, gz: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(str(path) + ".gz", "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _csv_field(value) -> str:
    value = str(value)
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value


def write_example(fmt: str, folder, gz: bool = False) -> Path:
    """Write the example data in format ``fmt`` into ``folder`` (created); ``gz`` gzips JSON-lines files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "ml-1m":  # fixed split: each user's latest item is the test item
        rows = _unique_rows()
        per_user: Dict[int, List[int]] = {}
        for user, item, _, _ in rows:
            per_user.setdefault(user, []).append(item - 1)
        (folder / "train.txt").write_text("".join(f"{u - 1} " + " ".join(map(str, v[:-1])) + "\n"
                                                  for u, v in per_user.items()))
        (folder / "test.txt").write_text("".join(f"{u - 1} {v[-1]}\n" for u, v in per_user.items()))
        (folder / "item_map.txt").write_text("".join(f"{m} {m - 1}\n" for m in range(1, 7)))
        (folder / "user_map.txt").write_text("".join(f"{u} {u - 1}\n" for u in per_user))
        (folder / "movies.dat").write_bytes("".join(f"{m}::{t}::{'|'.join(g)}\n" for m, (t, g) in MOVIES.items())
                                            .encode("latin-1"))
        (folder / "llm_response_item.json").write_text(json.dumps({"1": "A long story about toys."}))
    elif fmt == "ml-100k":
        (folder / "u.data").write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in RATINGS))
        (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
        lines = []
        for m, (title, genres) in MOVIES.items():
            flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
            lines.append(f"{m}|{title}|01-Jan-1995||http://example.org/{m}|{flags}\n")
        (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    elif fmt == "ml-latest-small":
        (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" +
                                            "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in RATINGS))
        (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(
            f"{m},{_csv_field(t)},{'|'.join(g) or '(no genres listed)'}\n" for m, (t, g) in MOVIES.items()))
        (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,funny,5\n2,1,Funny,6\n2,1,toys,7\n")
    elif fmt == "amazon-json":
        sequences: Dict[str, List[int]] = {}
        for user, item, _, _ in _unique_rows():
            sequences.setdefault(str(user), []).append(item)
        (folder / "Toy.inter.json").write_text(json.dumps(sequences))
        (folder / "Toy.item.json").write_text(json.dumps({str(m): p for m, p in PRODUCTS.items()}, indent=2))
    elif fmt == "amazon-2018":
        _json_lines(folder / "Toy.json", [{"reviewerID": f"U{u}", "asin": f"B{i:04d}", "overall": r,
                                           "unixReviewTime": t} for u, i, r, t in RATINGS], gz)
        _json_lines(folder / "meta_Toy.json", [{"asin": f"B{m:04d}", "title": p["title"],
                                                "description": [p["description"]] if p["description"] else [],
                                                "brand": p["brand"], "category": p["categories"].split(",")}
                                               for m, p in PRODUCTS.items()], gz)
    elif fmt == "goodreads":
        _json_lines(folder / "goodreads_interactions_toy.json",
                    [{"user_id": f"u{u}", "book_id": str(i), "rating": int(r), "is_read": True, "timestamp": t}
                     for u, i, r, t in RATINGS], gz)
        _json_lines(folder / "goodreads_books_toy.json",
                    [{"book_id": str(m), "title": p["title"], "description": p["description"]}
                     for m, p in PRODUCTS.items()], gz)
    elif fmt == "generic":
        (folder / "interactions.csv").write_text("user_id,item_id,rating,timestamp\n" +
                                                 "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in RATINGS))
        _json_lines(folder / "items.jsonl", [{"item_id": str(m), "title": t, "text": MOVIE_TEXTS[m]}
                                             for m, (t, _) in MOVIES.items()])
    else:
        raise ValueError(f"unknown example format {fmt!r}")
    return folder
