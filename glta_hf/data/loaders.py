"""``load_dataset(name, data_dir, **options) -> RecData``: one entry point over every supported format.

Formats (per-format parsers live in ``movielens.py``, ``amazon.py``, ``goodreads.py``, ``generic.py``; all of them
end in the one builder of ``_build.py``):

* ``ml-1m`` -- the CoLaKG MovieLens-1M: ``train.txt`` / ``test.txt`` (``user_idx item_idx ...``, 0-based),
  ``item_map.txt`` / ``user_map.txt`` (``original_id idx``), ``movies.dat`` (``MovieID::Title (Year)::Genres``,
  Latin-1), optional ``llm_response_item.json``. Default split ``"fixed"``; ``item_text="short"|"long"``.
* ``ml-100k`` -- ``u.data`` (tab-separated ``user item rating timestamp``), ``u.item`` (``|``-separated, Latin-1,
  genre flags), ``u.genre``.
* ``ml-latest-small`` -- ``ratings.csv``, ``movies.csv``, optional ``tags.csv`` (``with_tags=True``).
* ``amazon-json`` -- LC-Rec style ``<Name>.inter.json`` ``{"user": [item, ...]}`` in time order and
  ``<Name>.item.json`` ``{"item": {"title", "description", "brand", "categories"}}``.
* ``amazon-2018`` -- raw Amazon 2018 JSON lines: a reviews file (``reviewerID``, ``asin``, ``overall``,
  ``unixReviewTime``) and ``meta_*.json[.gz]`` (``asin``, ``title``, ``description``, ``brand``, ``category``).
* ``goodreads`` -- JSON lines: ``*interactions*.json[.gz]`` (``user_id``, ``book_id``, ``rating``, ``date_added`` or
  ``timestamp``) and ``*books*.json[.gz]`` (``book_id``, ``title``, ``description``).
* ``generic`` -- an interactions CSV/Parquet (``user_id,item_id[,rating][,timestamp]``) and an item-text file
  (CSV/Parquet/JSONL with ``item_id,title[,text]``); see :mod:`glta_hf.data.generic`.

Common options (all formats): ``split`` (``"fixed"`` -- ml-1m only and its default; ``"random"`` -- the default
elsewhere; ``"loo"``), ``test_fraction`` (0.2), ``seed`` (0), ``min_user_interactions`` / ``min_item_interactions``
(iterative k-core, 0 = off), ``rating_threshold`` (keep ratings >= it; ``None`` keeps all). What the builder does
with them, in order, is in :mod:`glta_hf.data._build`; malformed input raises :class:`~glta_hf.errors.DataFormatError`
naming the file and line, bad options :class:`~glta_hf.data.split.DatasetOptionError`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import DataFormatError
from .schema import RecData
from ..errors import DatasetOptionError

#: dataset name -> (module, loader function)
_LOADERS = {
    "ml-1m": ("movielens", "load_ml1m"),
    "ml-100k": ("movielens", "load_ml100k"),
    "ml-latest-small": ("movielens", "load_ml_latest_small"),
    "amazon-json": ("amazon", "load_amazon_json"),
    "amazon-2018": ("amazon", "load_amazon_2018"),
    "goodreads": ("goodreads", "load_goodreads"),
    "generic": ("generic", "load_generic"),
}
DATASETS = tuple(_LOADERS)

#: datasets shipped inside the package (their licence allows redistribution)
EMBEDDED = ("ml-latest-small",)


def embedded_dataset_dir(name: str = "ml-latest-small") -> Path:
    """The folder of a dataset shipped in ``glta_hf/resources`` (only ml-latest-small may be redistributed)."""
    if name not in EMBEDDED:
        raise DatasetOptionError(f"no embedded dataset {name!r}; embedded: {list(EMBEDDED)}")
    folder = Path(__file__).resolve().parents[1] / "resources" / name
    if not (folder / "ratings.csv").is_file():
        raise DataFormatError("the embedded dataset is missing from this installation", folder)
    return folder


def load_dataset(name: str, data_dir=None, **options) -> RecData:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``data_dir`` (the embedded copy when ``None``)."""
    if name not in _LOADERS:
        raise DatasetOptionError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    if data_dir is None:
        data_dir = embedded_dataset_dir(name)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataFormatError("dataset folder not found", data_dir)
    module_name, function = _LOADERS[name]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, function)(data_dir, **options)
