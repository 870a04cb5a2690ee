"""The docs a clone reads are true to the code: every module, class, function and file that docs/ARCHITECTURE.md
names exists, and the package cites no design note outside the repository."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import glta_hf

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
#: spans of ARCHITECTURE.md that are maths, not code
NOT_CODE = {"E_i", "E_u"}
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
FILE_SUFFIXES = (".json", ".safetensors", ".md", ".py", ".yaml", ".jsonl")


def _console_scripts():
    """The commands setup.cfg installs (``glta``)."""
    text = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    block = text.split("console_scripts =", 1)[1].split("\n\n", 1)[0]
    return {line.split("=")[0].strip() for line in block.splitlines() if "=" in line}


def _instances(tmp_path):
    """What the page names through an instance: ``model`` / ``self`` (a tiny GLTAForRecommendation), ``config``."""
    from conftest import build_tiny

    model = build_tiny(tmp_path).model
    return {"model": model, "self": model, "config": model.config}


def _modules():
    names = {}
    for info in pkgutil.walk_packages(glta_hf.__path__, "glta_hf."):
        names[info.name] = importlib.import_module(info.name)
    return names


def _script_names():
    """Top-level functions and classes of the thin scripts (parsed, not imported)."""
    found = set()
    for path in list((ROOT / "training").glob("*.py")) + list((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found.add(node.name)
    return found


def _spans(text: str):
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # the contract code blocks are signatures, not names
    return re.findall(r"`([^`\n]+)`", text)


def _known_names(modules):
    """Module leaf names, module-level names, and attribute names of every class glta_hf defines."""
    known = {name.rsplit(".", 1)[-1] for name in modules}
    for module in modules.values():
        for attr, value in vars(module).items():
            known.add(attr)
            if isinstance(value, type) and value.__module__.startswith("glta_hf"):
                known.update(dir(value))
    return known


def _resolve(dotted: str, modules) -> bool:
    """``module.attr...`` / ``Class.attr...`` / ``glta_hf.module.attr`` resolve to real objects."""
    parts = dotted.split(".")
    if parts[0] == "glta_hf":
        parts = parts[1:]
    for length in range(len(parts), 0, -1):  # the longest module prefix
        module = modules.get("glta_hf." + ".".join(parts[:length]))
        if module is not None:
            obj, rest = module, parts[length:]
            break
    else:
        classes = [getattr(m, parts[0]) for m in modules.values() if isinstance(getattr(m, parts[0], None), type)]
        if not classes:
            return False
        obj, rest = classes[0], parts[1:]
    for part in rest:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_every_name_architecture_md_cites_exists(tmp_path):
    import transformers

    modules = _modules()
    instances = _instances(tmp_path)
    known = (_known_names(modules) | _script_names() | _console_scripts()
             | set(dict(instances["model"].named_children())))
    text = ARCHITECTURE.read_text(encoding="utf-8")
    names_part = text.split("## Cross-module contracts")[0]  # below it: file formats and JSON fields
    missing = []
    for span in _spans(text):
        span = span.strip()
        if "/" in span and " " not in span and "<" not in span:  # a path in the repository (or in glta_hf/)
            path = span.split(" ")[0].rstrip("/")
            if not ((ROOT / path).exists() or (ROOT / "glta_hf" / path).exists()):
                missing.append(span)
            continue
        name = re.sub(r"\(.*\)$", "", span)  # a call: its callee
        if name in NOT_CODE or name.endswith(FILE_SUFFIXES) or not IDENTIFIER.match(name):
            continue
        head, _, rest = name.partition(".")
        if head in instances and rest:
            obj, ok = instances[head], True
            for part in rest.split("."):
                ok = ok and hasattr(obj, part)
                obj = getattr(obj, part, None)
        elif "." in name:
            ok = _resolve(name, modules)
        else:
            ok = name in known or hasattr(transformers, name) or f"`{span}`" not in names_part
        if not ok:
            missing.append(span)
    assert not missing, f"docs/ARCHITECTURE.md names what the code does not have: {missing}"


@pytest.mark.parametrize("bogus", ["glta_hf.modeling_glta.NoSuchClass", "graph.no_such_function"])
def test_the_name_check_can_fail(bogus):
    assert not _resolve(bogus, _modules())


def test_no_design_note_outside_the_repository_is_cited():
    cited = [str(p.relative_to(ROOT)) for p in (ROOT / "glta_hf").rglob("*.py")
             if "DESIGN.md" in p.read_text(encoding="utf-8") or "../shared" in p.read_text(encoding="utf-8")]
    assert not cited, f"glta_hf cites a design note a clone does not have: {cited} (use docs/DESIGN_CHOICES.md)"
    assert (ROOT / "docs" / "DESIGN_CHOICES.md").is_file()
