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
)
echo "| setting | kmq-convert options | bpw (linear layers) | bpw (whole model) | file MB | wiki.test.raw PPL | held-out novel PPL |"
echo "|---|---|---|---|---|---|---|"
for s in "${settings[@]}"; do
  name=${s%%|*}; opts=${s#*|}
  f="$out/$(echo "$name" | tr ' ,' '__').kmq"
  # shellcheck disable=SC2086
  [ -f "$f" ] || "$bin/kmq-convert" "$model" -o "$f" -q $opts 2>"$out/convert.log"
  bpw_q=$("$bin/kmq" info "$f" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.3f" % j["bits_per_weight"]["quantized"])')
  bpw_all=$("$bin/kmq" info "$f" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.3f" % j["bits_per_weight"]["all"])')
  mb=$(python3 -c "import os; print('%.1f' % (os.path.getsize('$f')/1e6))")
  p=()
  for text in wiki.test.raw heldout_Stevenson_Treasure_1883.txt; do
    p+=("$("$bin/kmq" perplexity -m "$f" -f "$shared/text/$text" --chunks "$chunks" --json 2>/dev/null |
      python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.3f ± %.3f" % (j["ppl"], j["ppl_stderr"]))')")
  done
  echo "| $name | \`$opts\` | $bpw_q | $bpw_all | $mb | ${p[0]} | ${p[1]} |"
done
