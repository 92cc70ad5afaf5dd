#!/usr/bin/env bash
# The one command that sets everything up and runs the main job on an embedded default:
# a simulated engine fleet (4 engines), the router in front of it (config/example.yaml),
# and a short mixed-tier load-generator run, first with round-robin then with polyserve
# (the scaler in advisory mode), printing per-tier attainment side by side and what the
# scaler would ask for; then the offline fleet simulator runs round-robin and polyserve on
# PolyServe's 4-tier mix.
#   scripts/demo.sh [--policy KIND] [--duration S]      (SLOROUTER_DEMO_RATE: req/s, default 13)
source "$(dirname "$0")/_env.sh"
POLICY=""
DURATION=""
while [ $# -gt 0 ]; do
  case "$1" in
    --policy) POLICY="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
export COLUMNS="${COLUMNS:-130}"  # rich tables: do not squeeze columns when output is not a terminal
OUT="${SLOROUTER_DEMO_OUT:-$ROOT/out/demo}"
mkdir -p "$OUT"
# the live part: 4 simulated 70B-like engines (a decode step of ~40 ms, so the interactive
# tier's 50 ms TPOT is tight), the router from config/example.yaml, the smoke workload at a
# load where a router that ignores SLOs misses that tier: first round-robin, then polyserve
# with the scaler in advisory mode (it decides per tier and logs what it would do; nothing
# is started or stopped). --policy KIND runs only that policy.
RATE="${SLOROUTER_DEMO_RATE:-13}"
if [ -n "$POLICY" ]; then POLICIES=("$POLICY"); else POLICIES=(round-robin polyserve); fi
export SLOROUTER_ADMIN_TOKEN="${SLOROUTER_ADMIN_TOKEN:-demo-admin-token}"  # for GET /admin/autoscale
pids=()
router=""
cleanup() { for p in "${pids[@]}" $router; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for port in 8001 8002 8003 8004 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo.sh: port $port is already in use; stop what listens there and run again" >&2; exit 1
  fi
done
wait_up() {
  python - "$@" <<'PY'
import time, urllib.request, sys
deadline = time.monotonic() + 60
for url in sys.argv[1:]:
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read(); break
        except Exception:
            if time.monotonic() > deadline:
                sys.exit(f"demo: {url} did not come up within 60 s (see out/demo/*.log)")
            time.sleep(0.2)
PY
}
echo "[demo] starting 4 simulated engines (h100-70b profile) on 127.0.0.1:8001-8004"
slorouter sim --engines 4 --base-port 8001 --profile h100-70b > "$OUT/sim.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:8001/health http://127.0.0.1:8004/health
for policy in "${POLICIES[@]}"; do
  CONFIG="$OUT/config-$policy.yaml"
  sed -e "s/^  kind: .*/  kind: $policy/" \
      -e "s/^  enabled: false               # run the scaler/  enabled: true                # run the scaler/" \
      -e "s/^  idle_s: 60.0                 # an empty server/  idle_s: 5.0                  # an empty server/" \
      "$ROOT/config/example.yaml" > "$CONFIG"
  echo
  echo "[demo] the router with policy $policy on 127.0.0.1:8080 ($CONFIG)"
  slorouter serve --config "$CONFIG" > "$OUT/router-$policy.log" 2>&1 & router=$!
  wait_up http://127.0.0.1:8080/health
  echo "[demo] load generator: config/workloads/smoke.yaml at $RATE req/s"
  args=(run --target http://127.0.0.1:8080 --workload "$ROOT/config/workloads/smoke.yaml" --rate "$RATE"
        --out "$OUT/results-$policy.json" --plot "$OUT/plots-$policy")
  [ -n "$DURATION" ] && args+=(--duration "$DURATION")
  mkdir -p "$OUT/plots-$policy"
  slorouter-loadgen "${args[@]}"
  if [ "$policy" = polyserve ]; then
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
  fi
  kill "$router" 2>/dev/null || true; wait "$router" 2>/dev/null || true; router=""
done
echo
echo "[demo] the same load, side by side (per-token deadlines met, of all arrivals):"
python - "$OUT" "${POLICIES[@]}" <<'PY'
import json, sys
out, policies = sys.argv[1], sys.argv[2:]
res = {p: json.load(open(f"{out}/results-{p}.json")) for p in policies}
tiers = list(next(iter(res.values()))["tiers"])
print(f"  {'policy':<12} " + " ".join(f"{t:>12}" for t in tiers) + f" {'good req/s':>11}")
for p, r in res.items():
    cells = " ".join(f"{100 * r['tiers'][t]['attainment']:>11.1f}%" for t in tiers)
    good = sum(r["tiers"][t]["goodput"] for t in tiers)
    print(f"  {p:<12} {cells} {good:>11.2f}")
PY
echo "[demo] results: $OUT/results-*.json, plots in $OUT/plots-*/, logs in $OUT/*.log"
echo
echo "[demo] the same policy code, offline: 20 simulated H100-8B-like servers, PolyServe's mix of four"
echo "[demo] TPOT tiers (20/30/50/100 ms, config/scenarios/polyserve-conv.yaml) at 260 req/s, 6000 requests"
for policy in round-robin polyserve; do
  slorouter simulate --scenario polyserve-conv --policy "$policy" --requests 6000 --rate 260 --no-progress \
    --json "$OUT/simulate-$policy.json"
done
echo "[demo] compare the t20 row: the tightest tier is where a router that ignores SLOs loses requests"
