#!/usr/bin/env bash
# Cross-check slorouter-loadgen against guidellm (a load generator no one here wrote).
#
# Both tools send the same constant request rate, the same output length (ignore_eos) and
# prompts of the same server-counted length to the same simulated vLLM engine, one after
# the other; the script compares their TTFT and ITL medians and fails if they differ by
# more than TOLERANCE (default 10 %). Not part of the test suite: it takes minutes.
#
#   scripts/guidellm_crosscheck.sh                 # defaults below; override with env vars
#   RATE=2 REQUESTS=120 PROFILE=h100-8b scripts/guidellm_crosscheck.sh
#
# Definitions compared (see docs/loadgen.md):
#   TTFT  guidellm: request start -> first streamed chunk with content.
#         ours:     send -> first streamed chunk with choices (vllm bench serve's TTFT).
#   ITL   guidellm: per request, (last token - first token) / (output tokens - 1), then the
#         median over requests. Ours under the same definition is vLLM's TPOT
#         (median_tpot_ms), which is what is compared; our per-gap ITL (vLLM's ITL,
#         median over all chunk gaps) is printed beside it.
#
# guidellm is installed once into its own virtualenv ($GUIDELLM_ENV, outside the repo; the
# CPU torch wheel from /opt/wheels first when it is there, so pip does not pull CUDA
# builds), and runs offline with a byte-level BPE tokenizer trained locally with the
# `tokenizers` library ($GUIDELLM_TOKENIZER).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
RATE="${RATE:-4}"                  # requests/s, constant
REQUESTS="${REQUESTS:-160}"        # per tool
PROMPT_TOKENS="${PROMPT_TOKENS:-128}"  # guidellm's synthetic prompt length (its tokenizer's tokens)
OUTPUT_TOKENS="${OUTPUT_TOKENS:-64}"
PROFILE="${PROFILE:-cpu-tiny}"     # simulated engine: step 19 ms + 2 ms per running sequence
PORT="${PORT:-18111}"
TOLERANCE="${TOLERANCE:-0.10}"
OUT="${OUT:-${TMPDIR:-/tmp}/slorouter-crosscheck}"
GUIDELLM_ENV="${GUIDELLM_ENV:-$HOME/.cache/slorouter/guidellm-env}"
GUIDELLM_TOKENIZER="${GUIDELLM_TOKENIZER:-$HOME/.cache/slorouter/bpe-tokenizer}"
TORCH_WHEEL="${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
mkdir -p "$OUT"

if [ ! -x "$GUIDELLM_ENV/bin/guidellm" ]; then
  echo "[crosscheck] installing guidellm into $GUIDELLM_ENV (once; takes minutes)" >&2
  python3.11 -m venv "$GUIDELLM_ENV"
  "$GUIDELLM_ENV/bin/pip" install -q --upgrade pip
  if [ -f "$TORCH_WHEEL" ]; then "$GUIDELLM_ENV/bin/pip" install -q "$TORCH_WHEEL"; fi
  "$GUIDELLM_ENV/bin/pip" install -q "guidellm==0.8.1" tokenizers
fi

if [ ! -f "$GUIDELLM_TOKENIZER/tokenizer.json" ]; then
  echo "[crosscheck] training a byte-level BPE tokenizer into $GUIDELLM_TOKENIZER" >&2
  "$GUIDELLM_ENV/bin/python" - "$GUIDELLM_TOKENIZER" <<'EOF'
import glob, os, sys
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast
files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:200]
tok = ByteLevelBPETokenizer()
tok.train(files=files, vocab_size=8000, min_frequency=2, special_tokens=["<|endoftext|>"])
special = "<|endoftext|>"
fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token=special, eos_token=special, unk_token=special)
fast.save_pretrained(sys.argv[1])
EOF
fi

echo "[crosscheck] simulated engine ($PROFILE) on 127.0.0.1:$PORT" >&2
"$ROOT/.venv/bin/slorouter" sim --engines 1 --base-port "$PORT" --profile "$PROFILE" >"$OUT/sim.log" 2>&1 &
SIM_PID=$!
trap 'kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null; then break; fi
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null || { echo "the simulated engine did not start; see $OUT/sim.log" >&2; exit 1; }
TARGET="http://127.0.0.1:$PORT"

echo "[crosscheck] guidellm: constant $RATE req/s, $REQUESTS requests, $PROMPT_TOKENS/$OUTPUT_TOKENS tokens" >&2
GUIDELLM_CMD=("$GUIDELLM_ENV/bin/guidellm" run
  --backend "kind=openai_http,target=$TARGET,request_format=/v1/chat/completions"
  --profile "kind=constant,rate=$RATE"
  --constraint "kind=max_requests,count=$REQUESTS"
  --data "kind=synthetic_text,prompt_tokens=$PROMPT_TOKENS,output_tokens=$OUTPUT_TOKENS"
  --tokenizer "kind=huggingface_auto,model=$GUIDELLM_TOKENIZER"
  --output "kind=json,path=$OUT/guidellm.json"
  --disable-console-interactive)
echo "  ${GUIDELLM_CMD[*]}" >&2
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "${GUIDELLM_CMD[@]}" >"$OUT/guidellm.log" 2>&1 \
  || { echo "guidellm failed; see $OUT/guidellm.log" >&2; exit 1; }

# the prompt length the server counted for guidellm's prompts: ours synthesizes exactly that
SERVER_PROMPT=$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); \
print(round(d['benchmarks'][0]['metrics']['prompt_token_count']['successful']['median']))" "$OUT/guidellm.json")
cat >"$OUT/workload.yaml" <<EOF
name: crosscheck
tiers: [{name: chat, class: latency, ttft_ms: 1000, tpot_ms: 100}]
model: auto
arrival: {process: constant, rate: $RATE}
requests: $REQUESTS
mix: [{tier: chat, share: 1, prompt_tokens: $SERVER_PROMPT, output_tokens: $OUTPUT_TOKENS}]
EOF
sleep 2
echo "[crosscheck] slorouter-loadgen: same rate and count, prompts of $SERVER_PROMPT server tokens" >&2
LOADGEN_CMD=("$ROOT/.venv/bin/slorouter-loadgen" run --target "$TARGET" --workload "$OUT/workload.yaml"
  --out "$OUT/loadgen.json" --no-progress)
echo "  ${LOADGEN_CMD[*]}" >&2
"${LOADGEN_CMD[@]}" >"$OUT/loadgen.log" 2>&1 || { echo "loadgen failed; see $OUT/loadgen.log" >&2; exit 1; }

"$PY" - "$OUT/guidellm.json" "$OUT/loadgen.json" "$TOLERANCE" "$RATE" "$PROFILE" <<'EOF'
import json, sys
g = json.load(open(sys.argv[1]))["benchmarks"][0]["metrics"]
ours = json.load(open(sys.argv[2]))
tol, rate, profile = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
med = lambda k: g[k]["successful"]["median"]
rows = {
    "ttft_median_ms": (med("time_to_first_token_ms"), ours["median_ttft_ms"]),
    "itl_median_ms": (med("inter_token_latency_ms"), ours["median_tpot_ms"]),
}
info = {
    "ttft_p90_ms": (g["time_to_first_token_ms"]["successful"]["percentiles"]["p90"], ours["p90_ttft_ms"]),
    "ours_per_gap_itl_median_ms (vLLM ITL)": (None, ours["median_itl_ms"]),
    "guidellm_tpot_incl_first_median_ms": (med("time_per_output_token_ms"), None),
    "prompt_tokens_median": (med("prompt_token_count"), sorted(ours["input_lens"])[len(ours["input_lens"]) // 2]),
    "output_tokens_median": (med("output_token_count"), sorted(ours["output_lens"])[len(ours["output_lens"]) // 2]),
    "completed": (g["request_totals"]["successful"], ours["completed"]),
    "request_throughput": (g["requests_per_second"]["successful"]["mean"], ours["request_throughput"]),
}
out = {"rate": rate, "profile": profile, "tolerance": tol, "compared": {}, "info": {}}
ok = True
print(f"{'metric':42} {'guidellm':>10} {'loadgen':>10} {'diff':>8}")
for name, (a, b) in rows.items():
    d = (b - a) / a
    ok &= abs(d) <= tol
    out["compared"][name] = {"guidellm": a, "loadgen": b, "rel_diff": d}
    print(f"{name:42} {a:10.2f} {b:10.2f} {100 * d:7.1f}%")
for name, (a, b) in info.items():
    out["info"][name] = {"guidellm": a, "loadgen": b}
    fa = "—" if a is None else f"{a:.2f}"
    fb = "—" if b is None else f"{b:.2f}"
    print(f"{name:42} {fa:>10} {fb:>10}")
out["agree"] = bool(ok)
print(json.dumps(out))
sys.exit(0 if ok else 1)
EOF
