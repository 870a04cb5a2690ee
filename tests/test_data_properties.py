"""Property tests: malformed files and options never escape as anything but a GLTAError.

Each example starts from a valid tiny dataset in one format, damages one of its files at random (truncation,
inserted bytes, a replaced line, a swapped delimiter, random content, a deleted file) and loads it with random
options. The loader must either raise a :class:`GLTAError` (a :class:`DataFormatError` for damaged files) or
return a RecData that satisfies the schema's invariants.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from glta_hf.data import RecData, load_dataset
from glta_hf.data.examples import FORMATS, write_example
from glta_hf.errors import DataFormatError, GLTAError

DELIMITERS = [b"\t", b",", b"|", b"::", b" ", b";", b":", b'"', b"{", b"}", b"[", b"\n", b"\r\n", b"\xff", b""]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """``template(fmt, gz)``: the valid example folder of a format, written once per module."""
    root = tmp_path_factory.mktemp("templates")

    def get(fmt: str, gz: bool) -> Path:
        folder = root / f"{fmt}-{int(gz)}"
        if not folder.exists():
            write_example(fmt, folder, gz=gz)
        return folder

    return get


@st.composite
def damage(draw, files):
    """A function that damages one of ``files`` (sorted names) in a folder."""
    name = draw(st.sampled_from(files))
    kind = draw(st.sampled_from(["truncate", "insert", "replace_line", "swap", "random", "delete"]))
    position = draw(st.floats(0, 1))
    blob = draw(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(lambda t: t.encode("utf-8")),
                          st.sampled_from([b"\xff\xfe", b"-1", b"1e400", b"nan", b"99999999999999999999999", b"null",
                                           b'"', b"{}", b"[]", b"\x00", "é".encode("latin-1")])))
    swap = (draw(st.sampled_from(DELIMITERS)), draw(st.sampled_from(DELIMITERS)))

    def apply(folder: Path) -> None:
        path = folder / name
        data = path.read_bytes()
        cut = int(position * len(data))
        if kind == "truncate":
            data = data[:cut]
        elif kind == "insert":
            data = data[:cut] + blob + data[cut:]
        elif kind == "replace_line":
            lines = data.split(b"\n")
            lines[int(position * (len(lines) - 1))] = blob
            data = b"\n".join(lines)
        elif kind == "swap" and swap[0]:
            data = data.replace(swap[0], swap[1])
        elif kind == "random":
            data = blob
        elif kind == "delete":
            path.unlink()
            return
        path.write_bytes(data)

    apply.description = f"{kind} {name} at {position:.2f} with {blob!r} / swap {swap!r}"  # type: ignore[attr-defined]
    return apply


options = st.fixed_dictionaries({}, optional={
    "split": st.sampled_from(["fixed", "random", "loo", "bogus"]),
    "test_fraction": st.sampled_from([0.2, 0.5, 0.0, 1.5, "x"]),
    "seed": st.sampled_from([0, 1, -1]),
    "min_user_interactions": st.integers(0, 4),
    "min_item_interactions": st.integers(0, 3),
    "rating_threshold": st.sampled_from([None, 3, 4.5, 9, "x"]),
})


def check_invariants(data: RecData) -> None:
    assert isinstance(data, RecData)
    assert data.num_users == len(data.user_ids) and data.num_items == len(data.items)
    assert list(data.items["item_idx"]) == list(range(data.num_items))
    assert all(isinstance(t, str) and t.strip() for t in data.item_texts + data.item_titles)
    seen_users, seen_items = set(), set()
    pairs = {}
    for name in ("train", "test"):
        matrix = data.matrix(name)
        assert matrix.nnz > 0
        users, items = matrix.to_pairs()
        assert (items >= 0).all() and (items < data.num_items).all()
        pairs[name] = set(zip(users.tolist(), items.tolist()))
        seen_users |= set(users.tolist())
        seen_items |= set(items.tolist())
    assert not pairs["train"] & pairs["test"]
    assert seen_users == set(range(data.num_users)) and seen_items == set(range(data.num_items))


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_files_raise_only_glta_errors(template, fmt, data):
    gz = data.draw(st.booleans()) if fmt in ("amazon-2018", "goodreads") else False
    source = template(fmt, gz)
    change = data.draw(damage(sorted(p.name for p in source.iterdir())))
    opts = data.draw(options)
    note(change.description)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / fmt
        shutil.copytree(source, folder)
        change(folder)
        try:
            result = load_dataset(fmt, folder, **opts)
        except GLTAError as err:
            assert str(err)
            return
        check_invariants(result)


@pytest.mark.parametrize("fmt", FORMATS)
def test_undamaged_templates_load(template, fmt):
    """The baseline of the property test: without damage every template loads (so errors above are caused)."""
    check_invariants(load_dataset(fmt, template(fmt, False), split="fixed" if fmt == "ml-1m" else "random"))


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["interactions.csv", "interactions.parquet", "items.jsonl"]))
def test_generic_random_bytes(content, name):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if name == "items.jsonl":
            (folder / "interactions.csv").write_text("user_id,item_id\na,x\na,y\nb,x\nb,y\n")
        (folder / name).write_bytes(content)
        try:
            check_invariants(load_dataset("generic", folder))
        except GLTAError as err:
            assert isinstance(err, DataFormatError) and str(err)
