"""Checkpoint integrity before the LLM loads, and argument validation in recommend(): the probe cases of issue 13
as regression tests, then property-based fuzzing (hypothesis) that allows only GLTAError subclasses naming the file
or the argument at fault."""
import json
import shutil
import struct

import pytest
import torch
from conftest import build_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import glta_hf.modeling_glta as modeling
from glta_hf import CheckpointError, GLTAForRecommendation, UnknownIdError
from glta_hf.checkpoint import CATALOGUE_NAME, MANIFEST_NAME, USER_TABLE_NAME, WEIGHTS_NAME
from glta_hf.decoding import ArgumentError, decoder_names
from glta_hf.errors import GLTAError
from glta_hf.testing import tiny_llama

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved tiny checkpoint; each test corrupts a copy."""
    root = tmp_path_factory.mktemp("integrity")
    tiny = build_tiny(root)
    tiny.model.save_pretrained(root / "ckpt")
    return root / "ckpt"


@pytest.fixture(scope="module")
def model(saved):
    return GLTAForRecommendation.from_pretrained(saved)


@pytest.fixture
def signed(saved, tmp_path, monkeypatch):
    """A fresh copy of the checkpoint, manifest included; loading the LLM from it is an error (every check must
    come first)."""
    def no_llm(*args, **kwargs):
        raise AssertionError("the LLM was loaded before the checkpoint files were checked")

    monkeypatch.setattr(modeling, "load_llm", no_llm)
    return shutil.copytree(saved, tmp_path / "ckpt")


@pytest.fixture
def copy(signed):
    """A fresh copy without its manifest (as saved before manifests existed): the structural checks behind the
    checksums, which also guard a folder whose files were edited consistently."""
    (signed / MANIFEST_NAME).unlink()
    return signed


def _load(folder):
    return GLTAForRecommendation.from_pretrained(folder)


# ------------------------------------------------------------------------------------------- probe cases


def test_duplicate_item_ids(copy):
    path = copy / CATALOGUE_NAME
    catalogue = json.loads(path.read_text())
    catalogue["item_ids"][3] = catalogue["item_ids"][1]
    path.write_text(json.dumps(catalogue))
    with pytest.raises(CheckpointError, match=rf"{CATALOGUE_NAME}: item id 'i1' appears twice \(rows 1 and 3\)"):
        _load(copy)


def test_truncated_weights(copy):
    path = copy / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_NAME}.*truncated"):
        _load(copy)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_NAME}: truncated"):
        _load(copy)


@pytest.mark.parametrize("name", [USER_TABLE_NAME, CATALOGUE_NAME])
def test_bad_json(copy, name):
    (copy / name).write_text('{"user_ids": [1, 2,')
    with pytest.raises(CheckpointError, match=rf"{name}: not valid JSON"):
        _load(copy)


def test_titles_shorter_than_ids(copy):
    path = copy / CATALOGUE_NAME
    catalogue = json.loads(path.read_text())
    catalogue["titles"] = catalogue["titles"][:-2]
    path.write_text(json.dumps(catalogue))
    with pytest.raises(CheckpointError, match=rf"{CATALOGUE_NAME}: 'titles' must be a list aligned .*12 ids, got 10"):
        _load(copy)


def test_user_table_checks(copy):
    path = copy / USER_TABLE_NAME
    table = json.loads(path.read_text())
    for change, message in (
        ({"user_ids": ["u0"] * 6}, "user id 'u0' appears twice"),
        ({"histories": [[], ["no-such-item"], [], [], [], []]},
         r"histories\[1\] \(user 'u1'\): item 'no-such-item' is not in item_catalogue.json"),
        ({"version": 3}, "unknown user table format 'glta-user-table' version 3"),
        ({"profiles": [None]}, "'profiles' must be a list of 6 entries"),
        ({"histories": None}, "the 'histories' list is missing"),
    ):
        path.write_text(json.dumps({**table, **change}))
        with pytest.raises(CheckpointError, match=rf"{USER_TABLE_NAME}: {message}"):
            _load(copy)


def test_user_table_holds_external_item_ids(copy, model):
    table = json.loads((copy / USER_TABLE_NAME).read_text())
    catalogue = json.loads((copy / CATALOGUE_NAME).read_text())["item_ids"]
    assert (table["format"], table["version"]) == ("glta-user-table", 2)
    assert any(table["histories"])
    assert table["histories"] == [[catalogue[row] for row in rows] for rows in model.user_table["histories"]]


def test_user_table_of_internal_rows_still_loads(copy, model, monkeypatch):
    """A table written before external ids (no format / version: histories are item rows) loads the same."""
    path = copy / USER_TABLE_NAME
    table = json.loads(path.read_text())
    legacy = {k: v for k, v in table.items() if k not in ("format", "version")}
    legacy["histories"] = model.user_table["histories"]
    path.write_text(json.dumps(legacy))
    monkeypatch.setattr(modeling, "load_llm", lambda *a, **k: model.llm)
    assert _load(copy).user_table["histories"] == model.user_table["histories"]
    legacy["histories"] = [[0], [99], [], [], [], []]
    path.write_text(json.dumps(legacy))
    with pytest.raises(CheckpointError, match=r"histories\[1\] must be a list of item rows in \[0, 12\)"):
        _load(copy)


def test_tensor_shape_and_dtype_checked_from_the_header(copy):
    from safetensors.torch import load_file, save_file

    state = load_file(str(copy / WEIGHTS_NAME))
    save_file({**state, "model.slot_embeddings": torch.zeros(3, 32)}, str(copy / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"shapes \['model.slot_embeddings: \(3, 32\) vs \(4, 32\)'\]"):
        _load(copy)
    save_file({**state, "model.slot_embeddings": torch.zeros(4, 32, dtype=torch.int32)}, str(copy / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="not floating point"):
        _load(copy)


def test_header_offsets_beyond_the_data(copy):
    path = copy / WEIGHTS_NAME
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4096
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_NAME}: tensor '{name}'.*needs 48 bytes, the header gives it 4144"):
        _load(copy)
    header[name]["data_offsets"][1] = 10**6
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_NAME}: tensor '{name}'.*does not fit"):
        _load(copy)


def test_config_missing_or_incomplete(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "llm_hidden_size": None}))
    with pytest.raises(CheckpointError, match=r"config.json: 'llm_hidden_size' is missing \(must be an integer\)"):
        _load(copy)
    (copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: file is missing"):
        _load(copy)


def test_missing_weights_and_catalogue(copy):
    (copy / CATALOGUE_NAME).unlink()
    with pytest.raises(CheckpointError, match=rf"{CATALOGUE_NAME}: file is missing"):
        _load(copy)
    (copy / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"no {WEIGHTS_NAME}"):
        _load(copy)


def test_recommend_bare_string_is_one_user(model):
    one = model.recommend("u1", k=2)
    assert [r["user"] for r in one] == ["u1"] and one == model.recommend(["u1"], k=2)
    with pytest.raises(UnknownIdError, match="unknown user '12'"):  # never users "1" and "2"
        model.recommend("12", k=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": True}, "k must be a positive int, got True"),
        ({"k": 0}, "k must be a positive int"),
        ({"k": 2.0}, "k must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"batch_size": False}, "batch_size must be a positive int"),
        ({"decoding": "nosuch"}, "decoding must be one of"),
        ({"exclude_seen": "no"}, "exclude_seen must be a bool"),
        ({"histories": "i1"}, "histories must be"),
        ({"histories": False}, "histories must be a dict by user or a list of item-id lists, got False"),  # fuzz
        ({"histories": 3}, "histories must be"),
        ({"histories": [["i1"], ["i2"]]}, "histories: 2 histories for 1 users"),
    ],
)
def test_recommend_argument_errors(model, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        model.recommend(["u1"], **{"k": 2, **kwargs})


def test_recommend_rejects_non_id_users(model):
    for users in (None, True, {"u1": 1}, [["u1"]], [None], 1.5):
        with pytest.raises(ArgumentError, match="users"):
            model.recommend(users, k=2)


# ------------------------------------------------------------------------------------------- fuzzing

_ARG_NAMES = ("users", "user", "k=", "k ", "batch_size", "decoding", "exclude_seen", "histories", "item")
_ids = st.one_of(st.sampled_from(["u0", "u1", "u5", "i3", "12", "", "u"]), st.integers(-2, 8), st.text(max_size=3))
_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.floats(allow_nan=True), st.text(max_size=4))


@FUZZ
@given(
    users=st.one_of(_ids, st.lists(st.one_of(_ids, st.none(), st.booleans()), max_size=4), _values),
    k=st.one_of(st.integers(-2, 14), _values),
    batch_size=st.one_of(st.integers(-1, 4), _values),
    decoding=st.one_of(st.sampled_from(decoder_names()), _values),
    exclude_seen=st.one_of(st.booleans(), _values),
    histories=st.one_of(st.none(), st.lists(st.one_of(st.none(), st.lists(_ids, max_size=3)), max_size=4),
                        st.dictionaries(_ids, st.lists(_ids, max_size=3), max_size=3), _values),
)
def test_fuzz_recommend_arguments(model, users, k, batch_size, decoding, exclude_seen, histories):
    try:
        out = model.recommend(users, k=k, batch_size=batch_size, decoding=decoding, exclude_seen=exclude_seen,
                              histories=histories)
    except GLTAError as err:
        assert any(name in str(err) for name in _ARG_NAMES), str(err)
        return
    assert all(len(r["items"]) == k == len(r["scores"]) for r in out)


_FILES = ("config.json", WEIGHTS_NAME, CATALOGUE_NAME, USER_TABLE_NAME, "tokenizer_config.json", "tokenizer.json")


@FUZZ
@given(
    name=st.sampled_from(_FILES),
    action=st.sampled_from(["truncate", "flip", "drop", "bad_json"]),
    where=st.floats(0, 1, exclude_max=True),
    bits=st.integers(1, 255),
)
def test_fuzz_corrupted_checkpoint(saved, tmp_path_factory, name, action, where, bits):
    folder = shutil.copytree(saved, tmp_path_factory.mktemp("fuzz") / "ckpt")
    path = folder / name
    raw = path.read_bytes()
    at = int(where * len(raw))
    if action == "truncate":
        path.write_bytes(raw[:at])
    elif action == "flip":
        path.write_bytes(raw[:at] + bytes([raw[at] ^ bits]) + raw[at + 1 :])
    elif action == "drop":
        path.unlink()
    else:
        path.write_text('{"broken": [1, 2,')
    try:
        GLTAForRecommendation.from_pretrained(folder, llm=tiny_llama(seed=0)[0].model)
    except GLTAError as err:
        named = name if not name.startswith("tokenizer") else "tokenizer"
        assert named in str(err) or (action == "drop" and name == "tokenizer.json"), str(err)


# ------------------------------------------------------------------------------------------- issue 25 probe cases


def test_from_pretrained_says_plainly_what_a_local_path_is(tmp_path, copy):
    with pytest.raises(CheckpointError, match="no such folder"):
        _load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no such folder"):
        _load("./runs/user/final")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint folder"):
        _load(tmp_path / "file.txt")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(CheckpointError, match="symlink loop"):
        _load(tmp_path / "loop")
    with pytest.raises(CheckpointError, match="neither a local checkpoint folder nor a Hub repo id"):
        _load("not a repo id!")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: [c], "expected a JSON object, got list"),
        (lambda c: {**c, "llm_hidden_size": -5}, "'llm_hidden_size' must be >= 1, got -5"),
        (lambda c: {**c, "num_items": "12"}, "'num_items' must be an integer, got '12'"),
        (lambda c: {**c, "node_dim": True}, "'node_dim' must be an integer, got True"),
        (lambda c: {**c, "num_slots": 0}, "'num_slots' must be >= 1"),
        (lambda c: {**c, "prompt": {**c["prompt"], "max_history": "3"}}, "'prompt.max_history' must be an integer, got '3'"),
        (lambda c: {**c, "prompt": {**c["prompt"], "max_history": -1}}, "'prompt.max_history' must be >= 0"),
        (lambda c: {**c, "prompt": {**c["prompt"], "use_chat_template": "yes"}}, "'prompt.use_chat_template' must be true/false"),
        (lambda c: {**c, "prompt": [1]}, "'prompt' must be an object"),
        (lambda c: {**c, "rank_chunk_size": 0}, "'rank_chunk_size' must be >= 1"),
        (lambda c: {**c, "lora": "r=8"}, "'lora' must be an object"),
    ],
)
def test_config_values_are_type_and_range_checked_at_load(copy, change, message):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(change(config)))
    with pytest.raises(CheckpointError, match=rf"config.json: {__import__('re').escape(message)}"):
        _load(copy)


@pytest.mark.parametrize("bad", [None, True, 1.5, ["i1"]])
def test_catalogue_ids_must_be_strings_or_integers(copy, bad):
    path = copy / CATALOGUE_NAME
    catalogue = json.loads(path.read_text())
    catalogue["item_ids"][5] = bad
    path.write_text(json.dumps(catalogue))
    with pytest.raises(CheckpointError, match=rf"{CATALOGUE_NAME}: item id at row 5 is .*strings or integers"):
        _load(copy)


def test_recommend_history_keys_match_users_as_strings(model):
    """The issue's probe: ``recommend(["1"], histories={1: [...]})`` ignored the int key (and used no history);
    ids match as strings everywhere, so the key applies, and a key naming no requested user is an error."""
    history = [model.item_catalogue["item_ids"][0], model.item_catalogue["item_ids"][3]]
    by_str = model.recommend(["1"], k=2, histories={"1": history})  # "1" is unknown: folded in from the history
    assert model.recommend(["1"], k=2, histories={1: history}) == by_str
    assert model.recommend([1], k=2, histories={"1": history})[0]["items"] == by_str[0]["items"]
    with pytest.raises(ArgumentError, match=r"histories: \['u9'\] are not among the requested users"):
        model.recommend(["u1"], k=2, histories={"u9": history})
    with pytest.raises(ArgumentError, match=r"histories: \['u1 '\] are not among"):  # a typo is never ignored
        model.recommend(["u1"], k=2, histories={"u1 ": history})
    with pytest.raises(ArgumentError, match="histories: keys must be user ids"):
        model.recommend(["u1"], k=2, histories={("u1",): history})
    with pytest.raises(ArgumentError, match="has two entries"):
        model.recommend([1], k=2, histories={1: history, "1": history})
