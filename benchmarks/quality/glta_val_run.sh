#!/usr/bin/env bash
# One GLTA lever run on DATASET (default ml-latest-small; ml-100k too), VALIDATION ONLY (issue 15 item 5, issue 16 lever grid): the base settings of
# docs/experiments/notebook.md "GLTA on ml-latest-small with every user's texts" plus the lever's own align.py flags, which override.
# The dataset's split, graph tables, texts and the settings not set below (H, L, target policy, lr schedule: the ones
# chosen on validation, issue 16) come from training/configs/$DATASET.yaml; collect_tuning.py names what a run changed.
# Every epoch is validated on every user; `collect_tuning.py` appends those rows to the tuning log. With
# FINAL_VAL=1 (for runs given --eval_strategy no, e.g. the uncached paper order, where a validation ranking per epoch
# costs minutes) only the final model is validated, by training/evaluate.py (the same evaluator, all users, first_k).
# Resumable: rerun after a kill. Test is never touched here (glta_ml_latest_small.sh does that, once per chosen config).
# Usage: [DATASET=ml-100k] [FINAL_VAL=1] bash benchmarks/quality/glta_val_run.sh RUN_NAME [align.py flags ...]
#   e.g. bash benchmarks/quality/glta_val_run.sh glta_paper_s1 --layout paper --prefix_cache false --seed 1
#        DATASET=ml-100k bash benchmarks/quality/glta_val_run.sh glta_res_fact_s0 --head factorized --graph_residual true
set -eo pipefail
RUN=${1:?RUN_NAME}; shift
DATASET=${DATASET:-ml-latest-small}
OUT=runs/$DATASET/$RUN
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python training/align.py --config "training/configs/$DATASET.yaml" --stage all \
  --graph_dir "runs/graph/$DATASET/lightgcn" --texts "benchmarks/texts/$DATASET/texts.jsonl" \
  --generate_missing_texts false --layout text_first --prefix_cache true --head linear --graph_residual false \
  --item_stage_epochs 0.1 --num_train_epochs 4 --eval_max_users 0 --eval_decoding first_k \
  --output_dir "$OUT" --disable_tqdm true --resume_from_checkpoint true "$@"
if [ -n "$FINAL_VAL" ]; then
  python training/evaluate.py --model "$OUT/user/final" --split validation --decoding first_k --batch-size 32 \
    --output "$OUT/metrics_validation.json"
fi
python benchmarks/quality/collect_tuning.py "$OUT" --run "$RUN" --log "benchmarks/results/$DATASET/tuning/glta.jsonl"
