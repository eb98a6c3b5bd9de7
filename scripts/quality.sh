#!/usr/bin/env bash
# Converts the shared 51M model with each quantization setting and measures perplexity
# (llama.cpp protocol, n_ctx 512) on WikiText-2 and the held-out novel. Prints one
# markdown row per setting; used for docs/QUALITY.md.
#   scripts/quality.sh [CHUNKS]      CHUNKS = chunks per text (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${KMQ_SHARED:-$(cd .. && pwd)/shared}
bin=${KMQ_BIN:-build/bin}
chunks=${1:-0}
out=${KMQ_QUALITY_DIR:-/tmp/kmq-quality}
mkdir -p "$out"
model="$shared/models/kmq-novels-51m"
# name | kmq-convert options
settings=(
  "bf16|--float bf16"
  "q4 tensor sb64|--bits 4"
  "q4 tensor sb64, embed bf16|--bits 4 --embed-type bf16"
  "q4 row, no scales|--bits 4 --codebook row --scale-block 0"
  "q4 group128, no scales|--bits 4 --codebook group --group-size 128 --scale-block 0"
  "q3 tensor sb64|--bits 3"
  "q3 row, no scales|--bits 3 --codebook row --scale-block 0"
  "q3 group256, no scales|--bits 3 --codebook group --group-size 256 --scale-block 0"
  "q2 tensor sb64|--bits 2"
  "q2 row sb64|--bits 2 --codebook row"
  "q2 group64, no scales|--bits 2 --codebook group --group-size 64 --scale-block 0"
  "q1 tensor sb64|--bits 1"
  "q1 row sb64|--bits 1 --codebook row"
  "q3 tensor sb64, embed q3|--bits 3 --embed-type 3"
  "q2 tensor sb64, embed q2|--bits 2 --embed-type 2"
  "q1 tensor sb64, embed bf16|--bits 1 --embed-type bf16"
)
echo "| setting | kmq-convert options | bpw (blocks) | bpw (embedding) | bpw (whole model) | file MB | wiki.test.raw PPL | held-out novel PPL |"
echo "|---|---|---|---|---|---|---|---|"
for s in "${settings[@]}"; do
  name=${s%%|*}; opts=${s#*|}
  f="$out/$(echo "$name" | tr ' ,' '__').kmq"
  # shellcheck disable=SC2086
  [ -f "$f" ] || "$bin/kmq-convert" "$model" -o "$f" -q $opts 2>"$out/convert.log"
  # bits per weight of the transformer blocks' matrices, of the (tied) embedding, of all
  read -r bpw_blk bpw_emb bpw_all < <("$bin/kmq" info "$f" --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
def bpw(pred):
    ts = [t for t in j["tensors"] if pred(t)]
    n = sum(t["shape"][0] * (t["shape"][1] if len(t["shape"]) > 1 else 1) for t in ts)
    return sum(t["bits_per_weight"] * t["shape"][0] * (t["shape"][1] if len(t["shape"]) > 1 else 1) for t in ts) / n
print("%.3f %.3f %.3f" % (bpw(lambda t: t["name"].startswith("blk.") and len(t["shape"]) == 2),
                          bpw(lambda t: t["name"] == "token_embd"), j["bits_per_weight"]["all"]))')
  mb=$(python3 -c "import os; print('%.1f' % (os.path.getsize('$f')/1e6))")
  p=()
  for text in wiki.test.raw heldout_Stevenson_Treasure_1883.txt; do
    r="$f.$text.$chunks.json"  # results are cached beside the model
    [ -s "$r" ] || "$bin/kmq" perplexity -m "$f" -f "$shared/text/$text" --chunks "$chunks" --json >"$r" 2>/dev/null
    p+=("$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.3f ± %.3f" % (j["ppl"], j["ppl_stderr"]))' "$r")")
  done
  echo "| $name | \`$opts\` | $bpw_blk | $bpw_emb | $bpw_all | $mb | ${p[0]} | ${p[1]} |"
done
