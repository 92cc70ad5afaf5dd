#!/usr/bin/env bash
# The one command that sets everything up and runs the main job on an embedded default:
# a simulated engine fleet (4 engines), the router in front of it (config/example.yaml with
# policy polyserve and the scaler in advisory mode), and a short mixed-tier load-generator run
# that prints per-tier attainment and goodput, then what the scaler would ask for; then the
# offline fleet simulator runs round-robin and polyserve on PolyServe's 4-tier mix.
#   scripts/demo.sh [--policy KIND] [--duration S]
source "$(dirname "$0")/_env.sh"
POLICY=""
DURATION=""
while [ $# -gt 0 ]; do
  case "$1" in
    --policy) POLICY="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
export COLUMNS="${COLUMNS:-130}"  # rich tables: do not squeeze columns when output is not a terminal
OUT="${SLOROUTER_DEMO_OUT:-$ROOT/out/demo}"
mkdir -p "$OUT"
# example.yaml with the policy (default polyserve) and autoscale enabled in advisory mode: the
# scaler decides per tier and logs what it would do, nothing is started or stopped
CONFIG="$OUT/config.yaml"
sed -e "s/^  kind: .*/  kind: ${POLICY:-polyserve}/" \
    -e "s/^  enabled: false               # run the scaler/  enabled: true                # run the scaler/" \
    -e "s/^  idle_s: 60.0                 # an empty server/  idle_s: 5.0                  # an empty server/" \
    "$ROOT/config/example.yaml" > "$CONFIG"
export SLOROUTER_ADMIN_TOKEN="${SLOROUTER_ADMIN_TOKEN:-demo-admin-token}"  # for GET /admin/autoscale
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for port in 8001 8002 8003 8004 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo.sh: port $port is already in use; stop what listens there and run again" >&2; exit 1
  fi
done
echo "[demo] starting 4 simulated engines on 127.0.0.1:8001-8004"
slorouter sim --engines 4 --base-port 8001 > "$OUT/sim.log" 2>&1 & pids+=($!)
echo "[demo] starting the router on 127.0.0.1:8080 ($CONFIG)"
slorouter serve --config "$CONFIG" > "$OUT/router.log" 2>&1 & pids+=($!)
python - <<'PY'
import time, urllib.request, sys
deadline = time.monotonic() + 60
for url in ["http://127.0.0.1:8001/health", "http://127.0.0.1:8004/health", "http://127.0.0.1:8080/health"]:
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read(); break
        except Exception:
            if time.monotonic() > deadline:
                sys.exit(f"demo: {url} did not come up within 60 s (see out/demo/*.log)")
            time.sleep(0.2)
PY
echo "[demo] running the load generator (config/workloads/smoke.yaml)"
args=(run --target http://127.0.0.1:8080 --workload "$ROOT/config/workloads/smoke.yaml" --out "$OUT/results.json" --plot "$OUT")
[ -n "$DURATION" ] && args+=(--duration "$DURATION")
slorouter-loadgen "${args[@]}"
echo "[demo] results: $OUT/results.json, plots in $OUT/, logs in $OUT/*.log"
echo
echo "[demo] the scaler (advisory mode, docs/autoscaling.md): what it would do with this fleet"
python - <<'PY'
import json, os, urllib.request
req = urllib.request.Request("http://127.0.0.1:8080/admin/autoscale",
                             headers={"Authorization": "Bearer " + os.environ["SLOROUTER_ADMIN_TOKEN"]})
state = json.load(urllib.request.urlopen(req, timeout=5))
print(f"  {'tier':<12} {'servers':>7} {'desired':>7} {'needed':>6} {'rate req/s':>10} {'cost s/req':>10} {'attainment':>10}")
for name, t in state["tiers"].items():
    att = "-" if t["attainment"] is None else f"{t['attainment']:.3f}"
    cost = "-" if t["cost_server_s"] is None else f"{t['cost_server_s']:.3f}"
    print(f"  {name:<12} {t['current']:>7} {t['desired']:>7} {t['need']:>6} {t['rate_rps']:>10.2f} {cost:>10} {att:>10}")
for d in state["decisions"][-8:]:
    what = f"ask for {d['add']}" if d["add"] else f"give back {', '.join(d['remove'])}" if d["remove"] else "keep"
    print(f"  would: tier {d['tier']}: {d['current']} -> {d['desired']} servers, {what} ({d['reason']})")
if not state["decisions"]:
    print("  would: change nothing")
PY
echo
echo "[demo] the same policy code, offline: 20 simulated H100-8B-like servers, PolyServe's mix of four"
echo "[demo] TPOT tiers (20/30/50/100 ms, config/scenarios/polyserve-conv.yaml) at 260 req/s, 6000 requests"
for policy in round-robin polyserve; do
  slorouter simulate --scenario polyserve-conv --policy "$policy" --requests 6000 --rate 260 --no-progress \
    --json "$OUT/simulate-$policy.json"
done
echo "[demo] compare the t20 row: the tightest tier is where a router that ignores SLOs loses requests"
