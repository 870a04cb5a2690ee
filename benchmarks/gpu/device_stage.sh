#!/usr/bin/env bash
# GPU kit, on the device machine: leave this call's carried files on the warm machine for the next call.
# /tmp/kit gets the GGUF part(s), COMMIT / PARTS and the datasets (unpacked), /tmp/site the wheels (installed).
# Every call but the last runs this alone; the last runs it first (device_run.sh). See benchmarks/gpu/README.md.
# KIT_TMP (default /tmp) and KIT_PIP_ARGS exist for the rehearsal on a machine without a GPU (README.md).
set -euo pipefail
T=${KIT_TMP:-/tmp}
mkdir -p $T/kit
for folder in .kit/call*/; do
    [ -d "$folder" ] && cp -f "$folder"* $T/kit/
done
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $T/site .whl/*.whl \
        ${KIT_PIP_ARGS:-}
fi
if [ -f $T/kit/data.tar.gz ]; then
    mkdir -p $T/kit/data && tar xzf $T/kit/data.tar.gz -C $T/kit/data && rm $T/kit/data.tar.gz
fi
ls -la $T/kit $T/kit/data 2>/dev/null | head -20
