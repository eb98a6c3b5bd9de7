#!/usr/bin/env bash
# kmq complete --batch-file and the sampling flags on stories260K: one JSON line per prompt
# in input order, the same greedy text as single completions, the same sampled text for a
# seed whatever --parallel, -o written atomically, stop strings, clear errors with line
# numbers for malformed batch files, no progress bar unless stderr is a terminal.
set -uo pipefail
bin=$1
shared=${KMQ_SHARED:-$(dirname "$0")/../../../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0; pass=0
check() { if eval "$2"; then echo "ok   $1"; pass=$((pass+1)); else echo "FAIL $1"; fail=$((fail+1)); fi; }
if [ ! -f "$shared/models/stories260K-hf/model.safetensors" ]; then
  echo "SKIP: $shared/models/stories260K-hf not found (set KMQ_SHARED)"; exit 0
fi
if ! command -v python3 >/dev/null; then echo "SKIP: python3 is needed to read the JSON lines"; exit 0; fi
m=$tmp/s.kmq
"$bin/kmq-convert" "$shared/models/stories260K-hf" -o "$m" --float f32 -q 2>/dev/null
printf 'Once upon a time\nThe little dog\n\nLily and Ben went to\nOne day, a bird\n' >"$tmp/p.txt"
"$bin/kmq" complete -m "$m" --batch-file "$tmp/p.txt" -n 24 --temp 0 --parallel 3 -t 1 >"$tmp/b.jsonl" 2>"$tmp/b.err"
check "batch exits 0" "[ $? -eq 0 ]"
check "one JSON line per prompt (blank lines skipped)" "[ \$(wc -l <'$tmp/b.jsonl') -eq 4 ]"
check "no progress bar when stderr is not a terminal" "! grep -q ETA '$tmp/b.err'"
# one-at-a-time reference
: >"$tmp/single.txt"
while IFS= read -r p; do
  [ -z "$p" ] && continue
  "$bin/kmq" complete -m "$m" -p "$p" -n 24 --temp 0 -t 1 --json 2>/dev/null >>"$tmp/single.txt"
done <"$tmp/p.txt"
check "batch greedy completions equal single completions, in input order, with ids, counts, reasons" "python3 - '$tmp/b.jsonl' '$tmp/single.txt' <<'PY'
import json, sys
b = [json.loads(l) for l in open(sys.argv[1])]
s = [json.loads(l) for l in open(sys.argv[2])]
assert [x['id'] for x in b] == [1, 2, 4, 5], [x['id'] for x in b]
assert [x['prompt'] for x in b] == [x['prompt'] for x in s]
for x, y in zip(b, s):
    assert x['completion'] == y['completion'], (x['completion'], y['completion'])
    assert x['completion_tokens'] == len(y['completion_ids']), x
    assert x['prompt_tokens'] == len(y['prompt_ids']), x
    assert x['finish_reason'] == y['finish_reason'] and x['finish_reason'] in ('length', 'eos', 'stop'), x
    assert 'prompt_seconds' in x['timings'] and 'gen_seconds' in x['timings']
PY"
strip() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    j = json.loads(l); j.pop("timings"); print(json.dumps(j, sort_keys=True))' "$1"; }
for par in 1 3; do
  "$bin/kmq" complete -m "$m" --batch-file "$tmp/p.txt" -n 24 --temp 1 --seed 11 --parallel $par -t 1 -o "$tmp/s$par.jsonl" 2>/dev/null
done
strip "$tmp/s1.jsonl" >"$tmp/s1.n"; strip "$tmp/s3.jsonl" >"$tmp/s3.n"
check "sampled batch is the same with --parallel 1 and 3" "[ -s '$tmp/s1.n' ] && cmp -s '$tmp/s1.n' '$tmp/s3.n'"
"$bin/kmq" complete -m "$m" -p "The little dog" -n 24 --temp 1 --seed 12 -t 1 --json 2>/dev/null >"$tmp/seed12.json"
check "prompt i is sampled with --seed + i" "python3 -c 'import json,sys
a=[json.loads(l) for l in open(sys.argv[1])][1]; b=json.load(open(sys.argv[2]))
assert a[\"completion\"] == b[\"completion\"], (a, b)' '$tmp/s1.jsonl' '$tmp/seed12.json'"
check "-o leaves no temporary file" "[ -z \"\$(ls '$tmp' | grep tmp-)\" ]"
cat >"$tmp/p.jsonl" <<'J'
{"id": "a", "prompt": "Once upon a time", "n_predict": 4}
{"id": 7, "prompt": "The little dog", "temperature": 0, "stop": ["."]}
J
"$bin/kmq" complete -m "$m" --batch-file "$tmp/p.jsonl" -n 40 --temp 0 -t 1 --progress >"$tmp/j.jsonl" 2>"$tmp/j.err"
check "jsonl ids and per-prompt overrides (n_predict, stop)" "python3 - '$tmp/j.jsonl' <<'PY'
import json, sys
a, b = [json.loads(l) for l in open(sys.argv[1])]
assert a['id'] == 'a' and a['completion_tokens'] == 4 and a['finish_reason'] == 'length', a
assert b['id'] == 7 and b['finish_reason'] == 'stop' and '.' not in b['completion'], b
PY"
check "--progress shows a bar with tok/s and ETA" "grep -q 'tok/s, ETA' '$tmp/j.err'"
bad() {  # name, file content, expected message
  printf '%b' "$2" >"$tmp/bad.jsonl"
  "$bin/kmq" complete -m "$m" --batch-file "$tmp/bad.jsonl" -n 4 >/dev/null 2>"$tmp/bad.err"
  check "$1" "[ $? -eq 1 ] && grep -qF -- '$3' '$tmp/bad.err'"
}
bad "invalid JSON names the line" '{"prompt": "a"}\n\n{"prompt": "b"\n' 'bad.jsonl:3: not valid JSON'
bad "a missing prompt names the line" '{"prompt": "a"}\n{"id": 2}\n' 'bad.jsonl:2: no "prompt"'
bad "an unknown key names the line" '{"prompt": "a", "temprature": 1}\n' 'bad.jsonl:1: unknown key "temprature"'
bad "a wrong type names the line" '{"prompt": "a", "n_predict": "x"}\n' 'bad.jsonl:1: "n_predict" must be an integer'
bad "a stop of the wrong type names the line" '{"prompt": "a", "stop": 3}\n' 'bad.jsonl:1: a value has the wrong type'
bad "a huge temperature is refused, not converted" '{"prompt": "a", "temperature": 1e300}\n' 'bad.jsonl:1: "temperature" must be a finite number'
bad "a number beyond a double names the line" '{"prompt": "a", "top_p": 1e3004}\n' 'bad.jsonl:1: not valid JSON'
bad "an integer out of range is refused" '{"prompt": "a", "top_k": 1099511627776}\n' 'bad.jsonl:1: "top_k" must be in'
bad "a bad sampler value names the line" '{"prompt": "a", "top_p": 2}\n' 'bad.jsonl:1: --top-p 2'
bad "an empty batch file" '\n\n' 'no prompts'
"$bin/kmq" complete -m "$m" --batch-file "$tmp/p.txt" -p x >/dev/null 2>"$tmp/e1"
check "--batch-file with -p is refused" "grep -q 'no -p or -f' '$tmp/e1'"
"$bin/kmq" complete -m "$m" -p "Once upon a time" -n 48 --temp 0 -t 1 --stop "Lily" >"$tmp/stop.out" 2>"$tmp/stop.err"
check "--stop ends the streamed completion before the stop string" \
  "grep -q 'there was a little girl named \$' '$tmp/stop.out' && grep -q '(stop)' '$tmp/stop.err'"
"$bin/kmq" complete -m "$m" -p "Once upon a time" -n 48 --temp 0 -t 1 --stop Lily --stop little >"$tmp/stop2.out" 2>/dev/null
check "several --stop strings: the first one found ends it" "grep -q 'there was a \$' '$tmp/stop2.out'"
"$bin/kmq" complete -m "$m" -p "Once upon a time" -n 48 --temp 0 -t 1 --repeat-penalty 1.5 --frequency-penalty 0.5 --presence-penalty 0.5 >"$tmp/pen.out" 2>/dev/null
"$bin/kmq" complete -m "$m" -p "Once upon a time" -n 48 --temp 0 -t 1 >"$tmp/nopen.out" 2>/dev/null
check "penalties change the greedy text" "[ -s '$tmp/pen.out' ] && ! cmp -s '$tmp/pen.out' '$tmp/nopen.out'"
"$bin/kmq" complete -m "$m" -p "x" --repeat-penalty 0 >/dev/null 2>"$tmp/e2"
check "an out-of-range sampler option is refused by name" "grep -q -- '--repeat-penalty 0 is out of range' '$tmp/e2'"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
