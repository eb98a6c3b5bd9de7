#!/usr/bin/env bash
# The experiments of docs/QAT.md, on one GPU (runs of a phase share it, concurrently).
#   run_experiments.sh scratch  DATA RUNS VOCAB_DIR   # fixed-memory experiment, from scratch
#   run_experiments.sh finetune DATA RUNS BASE_DIR    # QAT vs PTQ, fine-tuning BASE_DIR
#   run_experiments.sh bundle   DATA RUNS BASE_DIR    # the bundled default model (then see
#                                                     # docs/QAT.md for its conversion)
# DATA holds train.u16, val.u16, wiki.u16, heldout.u16 (made by `kmq tokenize`, see
# docs/QAT.md); each run writes RUNS/NAME/{model.safetensors,config.json,train_log.jsonl,eval.json}.
set -euo pipefail
phase=$1 data=$2 runs=$3 base=$4
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"
common=(--train "$data/train.u16" --val "$data/val.u16" --eval "wiki=$data/wiki.u16" --eval "heldout=$data/heldout.u16"
        --seq 512 --batch 32 --data-seed 7 --seed 1 --log-every 50)
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
run() {  # NAME ARGS...
  local name=$1; shift
  # KMQ_QAT_MAX_USED_MB: wait until the GPU has at most this much memory in use (runs of the
  # other phase may still hold it), then give the new run a moment to take its share
  if [ -n "${KMQ_QAT_MAX_USED_MB:-}" ]; then
    while [ "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)" -gt "$KMQ_QAT_MAX_USED_MB" ]; do
      sleep 5
    done
  fi
  python3 "$here/train.py" "$@" "${common[@]}" --out "$runs/$name" > "$runs/$name.log" 2>&1 &
  [ -z "${KMQ_QAT_MAX_USED_MB:-}" ] || sleep 45
}
case $phase in
  scratch)
    # linear layers of equal bytes: 6 layers at 4 bits ~ 11 at 2 bits ~ 20 at 1 bit (hidden 320,
    # 5 heads of 64, 1 KV head, FFN 896); the tied embedding QAT'd at 4 bits in all three.
    for spec in "s4:6:4" "m2:11:2" "l1:20:1"; do
      IFS=: read -r name layers bits <<< "$spec"
      run "scratch-$name" --arch "320,$layers,5,1,896" --vocab-from "$base" --bits "$bits" --embed-bits 4 \
        --tokens 25M --lr 2e-3 --warmup 100 --refresh-every 100
    done ;;
  finetune)
    # same tokens, same schedule; embedding (tied) frozen in bf16; --bits 0 is the float control
    for b in 0 1 2 4; do
      run "ft-q$b" --init "$base" --bits "$b" --freeze-embeddings --tokens 20M --lr 3e-4 --warmup 50 \
        --refresh-every 100
    done ;;
  bundle)
    # 1-bit linear layers and the tied embedding trained at 3 bits, same tokens as finetune
    run "bundle-q1e3" --init "$base" --bits 1 --embed-bits 3 --tokens 20M --lr 3e-4 --warmup 50 \
      --refresh-every 100 ;;
  *) echo "usage: $0 scratch|finetune|bundle DATA RUNS BASE_OR_VOCAB_DIR" >&2; exit 2 ;;
esac
wait
echo "run_experiments: $phase done"
