#!/usr/bin/env bash
# GLTA on ml-latest-small with every user's texts, text_first layout + exact prefix cache (docs/experiments/notebook.md, "GLTA on
# ml-latest-small with every user's texts"). Its test files land in benchmarks/results/ml-latest-small/: move them to
# variants/, or rename the chosen one to its row, then `python benchmarks/summarize.py --write` (benchmarks/README.md). Resumable: rerun after a kill. Needs the re-tuned LightGCN tables:
#   OMP_NUM_THREADS=1 python benchmarks/tune_graph.py --dataset ml-latest-small --phase all   # -> runs/graph/...
# Usage: bash benchmarks/quality/glta_ml_latest_small.sh [linear|factorized] [extra align.py flags ...]
set -eo pipefail
HEAD=${1:-linear}; shift || true
OUT=runs/ml-latest-small/glta_text_first_${HEAD}_s0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python training/align.py --config training/configs/ml-latest-small.yaml --stage all --head "$HEAD" \
  --graph_dir runs/graph/ml-latest-small/lightgcn --texts benchmarks/texts/ml-latest-small/texts.jsonl \
  --generate_missing_texts false --layout text_first --prefix_cache true --graph_residual false --eval_decoding first_k \
  --item_stage_epochs 0.1 --num_train_epochs 4 --eval_max_users 0 \
  --output_dir "$OUT" --disable_tqdm true --resume_from_checkpoint true "$@"
# test: once per configuration chosen on validation
for dec in first_k first_logit all_slots; do
  python training/evaluate.py --model "$OUT/user/final" --split test --decoding "$dec" --batch-size 32 --prefix-cache \
    --results-dir benchmarks/results --run-name "glta_text_first_${HEAD}_$dec" --output "$OUT/metrics_test_$dec.json"
done
