#!/usr/bin/env bash
# The paper's GLTA rows on CPU (issue 24), one row at a time, with the recipe of training/configs/$DATASET.yaml (the
# tables of the committed lightgcn row, the committed texts, a persistent exact prefix store): train with every
# epoch validated (the best epoch loaded), append the epochs to the tuning log, then test once and write the row's
# result file benchmarks/results/$DATASET/<row>.json (the test command inside).
#   glta          both stages; then three test rows from the one model: glta (first_k), glta_fl (first_logit),
#                 glta_ar (autoregressive)
#   glta_wo_ia    both projectors in the user stage, no item stage (--no_item_alignment)
#   glta_wo_ua    user ids as text (--user_as_text)       } user stage only, from glta's item stage
#   glta_wo_pf / glta_wo_pd / glta_wo_both                } (the item stage does not see the texts)
#   glta_residual GLTA + the frozen LightGCN score (not the paper's method; issue 23's recipe): both stages on a graph
#                 fit without 20% of each user's training edges, which become the targets (--target_policy
#                 held_out), ranked with the graph refit on every edge (the config's graph_dir)
# Resumable: rerun the same command after a kill (align.py resumes at the last checkpoint: one every
# RESUME_SAVE_STEPS steps, default 25, between the epochs' own; the prefix stores and finished test rows are kept).
# On another machine (runs/ is not committed): benchmarks/quality/carry_run.py save runs/$DATASET/paper/$ROW
# benchmarks/checkpoints/$DATASET/$ROW, commit that folder (a few MB: packed); this script restores it before it
# trains (glta's too, for the rows that start from its item stage), saves it again after training and, when the
# row is tested, drops it (glta keeps its item stage); the prefix store is recomputed (the same numbers).
# Usage: [THREADS=2] bash benchmarks/quality/paper_rows.sh DATASET ROW [align.py flags ...]  (THREADS: torch threads of
# training and test, default 1)
#   e.g. nice -n 2 bash benchmarks/quality/paper_rows.sh ml-1m glta
set -eo pipefail
DATASET=${1:?DATASET (ml-1m, amazon-scientific, ...: training/configs/DATASET.yaml)}
ROW=${2:?ROW (glta, glta_residual, glta_wo_ia, glta_wo_ua, glta_wo_pf, glta_wo_pd, glta_wo_both)}
shift 2
CONFIG=${CONFIG:-training/configs/$DATASET.yaml}  # CONFIG=path: another recipe file (a rehearsal on tiny data)
OUT=runs/$DATASET/paper/$ROW
CARRIED=benchmarks/checkpoints/$DATASET
# The LLM's states over each user's prompt text (under the config's prefix_cache_dir), one store per prompt: glta,
# glta_residual and glta_wo_ia share the full prompt's; each other ablation's prompt differs (no profile, no
# prediction, the user id as text) and has its own. ml-1m's full store is ~29 GB: delete a store when its rows are done.
case $ROW in glta|glta_residual|glta_wo_ia) PROMPT=full ;; *) PROMPT=$ROW ;; esac
STORE=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['prefix_cache_dir'])" "$CONFIG")/$PROMPT
GRAPH=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['graph_dir'])" "$CONFIG")
DATA_DIR=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data_dir'])" "$CONFIG")
HELD_OUT_GRAPH=benchmarks/gpu/nodes/$DATASET-lightgcn_ho20  # committed (ml-1m, amazon-scientific); the script says how to make one
TEST_FLAGS=()
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
case $ROW in
  glta) STAGE=(--stage all) ;;
  glta_wo_ia) STAGE=(--stage all --no_item_alignment true) ;;
  glta_wo_ua) STAGE=(--stage user --init_from "runs/$DATASET/paper/glta/item/final" --user_as_text true) ;;
  glta_wo_pf) STAGE=(--stage user --init_from "runs/$DATASET/paper/glta/item/final" --no_profile true) ;;
  glta_wo_pd) STAGE=(--stage user --init_from "runs/$DATASET/paper/glta/item/final" --no_prediction true) ;;
  glta_wo_both) STAGE=(--stage user --init_from "runs/$DATASET/paper/glta/item/final" --no_profile true
                       --no_prediction true) ;;
  glta_residual) STAGE=(--stage all --graph_dir "$HELD_OUT_GRAPH" --graph_residual true --target_policy held_out)
                 TEST_FLAGS=(--residual-graph "$GRAPH")
                 if [ ! -f "$HELD_OUT_GRAPH/node_embeddings.safetensors" ]; then
                   echo "paper_rows.sh: glta_residual needs $HELD_OUT_GRAPH: training/pretrain_graph.py with the" \
                        "settings of $GRAPH/graph_config.json plus --held-out-fraction 0.2 --held-out-seed 0" \
                        "--skip-test --output-dir $HELD_OUT_GRAPH" >&2; exit 2
                 fi ;;
  *) echo "paper_rows.sh: unknown row '$ROW'" >&2; exit 2 ;;
esac
python benchmarks/quality/carry_run.py restore "$CARRIED/$ROW" "$OUT"
if [ "${STAGE[1]}" = user ]; then
  python benchmarks/quality/carry_run.py restore "$CARRIED/glta" "runs/$DATASET/paper/glta"
fi
if [ "${STAGE[1]}" = user ] && [ ! -f "runs/$DATASET/paper/glta/item/final/model.safetensors" ]; then
  echo "paper_rows.sh: $ROW starts from glta's item stage: run 'paper_rows.sh $DATASET glta' first" >&2; exit 2
fi
python training/align.py --config "$CONFIG" "${STAGE[@]}" --generate_missing_texts false \
  --prefix_cache_dir "$STORE" --eval_strategy epoch --save_strategy epoch \
  --load_best_model_at_end true --output_dir "$OUT" --threads "${THREADS:-1}" --disable_tqdm true --resume_from_checkpoint true \
  --resume_save_steps "${RESUME_SAVE_STEPS:-25}" "$@"
python benchmarks/quality/carry_run.py save "$OUT" "$CARRIED/$ROW"
python benchmarks/quality/collect_tuning.py "$OUT" --run "paper_$ROW" --log "benchmarks/results/$DATASET/tuning/glta.jsonl"
test_row() {  # NAME DECODING: the chosen model tested once (skipped when the row's file exists); its per-user
  # values kept beside the row (benchmarks/results/$DATASET/per_user/NAME.json) for benchmarks/quality/paired_compare.py
  if [ -f "benchmarks/results/$DATASET/$1.json" ]; then echo "$1: exists, not re-tested"; return; fi
  python training/evaluate.py --model "$OUT/user/final" --data-dir "$DATA_DIR" --split test --decoding "$2" \
    --batch-size 32 --threads "${THREADS:-1}" --per-user \
    --prefix-cache-dir "$STORE" "${TEST_FLAGS[@]}" --results-dir benchmarks/results --results-name "$DATASET" --run-name "$1" \
    --output "$OUT/metrics_test_$2.json"
  mkdir -p "benchmarks/results/$DATASET/per_user"
  cp "$OUT/metrics_test_$2.json" "benchmarks/results/$DATASET/per_user/$1.json"
}
test_row "$ROW" first_k
if [ "$ROW" = glta ]; then
  test_row glta_fl first_logit
  test_row glta_ar autoregressive
fi
# The row is done: nothing of it needs carrying, but glta's item stage, which the other rows start from
if [ "$ROW" = glta ]; then
  python benchmarks/quality/carry_run.py save "$OUT" "$CARRIED/$ROW" --stages item
else
  rm -rf "${CARRIED:?}/$ROW"
fi
