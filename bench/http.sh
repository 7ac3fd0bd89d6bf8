#!/usr/bin/env bash
# bench/http.sh: HTTP throughput and latency of `keyhole serve` against `wasmtime serve`.
#
#   1. `POST /v1/functions/echo/invoke` on keyhole vs the equivalent wasi:http echo
#      component (bench/hello-wasi-http) on `wasmtime serve`, at concurrency 1, 16, 64,
#      with the keyhole/wasmtime throughput ratio.
#   2. A function making one authenticated GET (API key injected by keyhole) to a local
#      upstream API that checks the key (host/examples/bench-upstream.rs: 401 without it),
#      against the same GET made directly, with the added latency: over HTTP across
#      processes (fetch − the same function refused the call − the direct GET made from
#      keyhole's CPU), against a hand-written service making the same GET
#      (host/examples/bench-service.rs: axum + reqwest, no wasm, no keyhole; its /fetch −
#      /refused is what one outbound call costs a server here), and (GATEWAY=1, the
#      default) in one process with `cargo bench --bench gateway`, which leaves out the
#      cost of cross-process wake-ups. The same cases are measured twice at concurrency 1:
#      with oha, one case per round (rounds alternate), and with bench-pairs
#      (host/examples/bench-pairs.rs), which alternates fetch and its refused invocation
#      request by request, so a drift of the machine's speed between rounds cannot land
#      on one case only.
#
# Installs what is missing from crates.io: oha (load generator) and wasmtime-cli 48
# (compiles for a long time, once). Results: a markdown report on stdout and in
# target/bench-http.md. Knobs (environment):
#   DURATION=5s           length of each oha run
#   ROUNDS=3              rounds per comparison; the cases of one comparison alternate
#                         (A B A B ...) and the report gives medians, so a burst of
#                         background load hits both sides alike
#   CONCURRENCY="1 16 64" concurrency levels
#   PIN=1                 with taskset and >= 2 CPUs: load generator on CPU 0, servers
#                         on the others, so the two never fight for a core (0 disables);
#                         with >= 3 CPUs the last one is the upstream API's alone
#   UPSTREAM_CPUS=...     (with PIN=1) override the upstream API's CPUs (by default its
#                         own with >= 3 CPUs, else the servers': it shares keyhole's)
#   PAIRED=1              also run the interleaved measurement (0 skips it)
#   GATEWAY=1             also run the in-process authenticated-call bench (0 skips it)
#   IDLE_SPIN=0           1 keeps every CPU from going idle with one SCHED_IDLE busy loop
#                         per CPU (it yields to any other task). On a VM whose idle vCPUs
#                         halt (guest halt polling off), each wake-up of an idle CPU goes
#                         through the hypervisor; this shows the figures without that, as
#                         on bare metal or with halt polling. Same for both servers.
#   KEYHOLE_BIN=...       run this keyhole binary instead of the one just built (to
#                         compare two builds: copy each aside, then run the script
#                         alternately with each)
#   KEYHOLE_PORT=18976 WASMTIME_PORT=18977 UPSTREAM_PORT=18978 SERVICE_PORT=18979
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
GATEWAY=${GATEWAY:-1}
PAIRED=${PAIRED:-1}
IDLE_SPIN=${IDLE_SPIN:-0}
CONCURRENCY=${CONCURRENCY:-"1 16 64"}
PIN=${PIN:-1}
KEYHOLE_PORT=${KEYHOLE_PORT:-18976}
WASMTIME_PORT=${WASMTIME_PORT:-18977}
UPSTREAM_PORT=${UPSTREAM_PORT:-18978}
SERVICE_PORT=${SERVICE_PORT:-18979}
UPSTREAM_KEY=bench-upstream-key
WASMTIME_VERSION=${WASMTIME_VERSION:-48}
REPORT="$ROOT/target/bench-http.md"
BODY='{"hello":"world"}'

step() { printf '\n==> %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# --- tools -------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
have python3 || { echo "python3 is needed to read oha's JSON output" >&2; exit 1; }
if ! have oha; then
    step "installing oha (load generator) from crates.io"
    cargo install oha --locked
fi
if ! have wasmtime || ! wasmtime --version | grep -q "^wasmtime $WASMTIME_VERSION\."; then
    step "installing wasmtime-cli $WASMTIME_VERSION from crates.io (this compiles for a long time)"
    cargo install wasmtime-cli --version "^$WASMTIME_VERSION" --locked
fi
have rustup && rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
if [ "$IDLE_SPIN" = 1 ] && ! { have chrt && have taskset && chrt --idle 0 true; }; then
    echo "IDLE_SPIN=1 needs chrt and taskset (util-linux) and a kernel with SCHED_IDLE" >&2
    exit 1
fi

# --- builds ------------------------------------------------------------------------
step "building keyhole (release), the upstream API, the plugins and the wasi:http echo component"
cargo build --release --quiet -p keyhole-host --bin keyhole
cargo build --release --quiet -p keyhole-host --example bench-upstream --example bench-service \
    --example bench-pairs
if [ "$GATEWAY" = 1 ]; then cargo bench --quiet -p keyhole-host --bench gateway --no-run; fi
(cd plugins && cargo build --quiet --target wasm32-wasip2 --release)
(cd bench/hello-wasi-http && cargo build --quiet --target wasm32-wasip2 --release)
KEYHOLE="${KEYHOLE_BIN:-$ROOT/target/release/keyhole}"
WASM="$ROOT/plugins/target/wasm32-wasip2/release"
HELLO="$ROOT/bench/hello-wasi-http/target/wasm32-wasip2/release/hello_wasi_http.wasm"

# --- CPU placement -----------------------------------------------------------------
NCPU=$(nproc)
LOAD=() SERVE=() UPSTREAM_ON=()
if [ "$PIN" = 1 ] && have taskset && [ "$NCPU" -ge 2 ]; then
    LOAD=(taskset -c 0)
    if [ "$NCPU" -ge 3 ]; then
        # The upstream API gets a CPU of its own, as a real API has its own machine.
        SERVE=(taskset -c "1-$((NCPU - 2))")
        UPSTREAM_CPUS=${UPSTREAM_CPUS:-$((NCPU - 1))}
        PLACEMENT="oha on CPU 0, servers on CPUs 1-$((NCPU - 2))"
    else
        SERVE=(taskset -c "1-$((NCPU - 1))")
        UPSTREAM_CPUS=${UPSTREAM_CPUS:-1-$((NCPU - 1))}
        PLACEMENT="oha on CPU 0, servers on CPUs 1-$((NCPU - 1))"
    fi
    UPSTREAM_ON=(taskset -c "$UPSTREAM_CPUS")
    PLACEMENT+=", upstream API on CPUs $UPSTREAM_CPUS"
    UPSTREAM_CPUS_SHOWN=$UPSTREAM_CPUS
else
    PLACEMENT="unpinned (servers and oha share all $NCPU CPUs)"
    UPSTREAM_CPUS_SHOWN="any"
fi
CLIENT=("${LOAD[@]}") # where `run` starts oha
if [ "$IDLE_SPIN" = 1 ]; then
    PLACEMENT+="; idle CPUs kept busy by a SCHED_IDLE spinner each (IDLE_SPIN=1)"
else
    PLACEMENT+="; idle CPUs may halt (IDLE_SPIN=0)"
fi

# --- servers -----------------------------------------------------------------------
WORK=$(mktemp -d)
export KEYHOLE_HOME="$WORK/home"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$IDLE_SPIN" = 1 ]; then
    for cpu in $(seq 0 $((NCPU - 1))); do
        taskset -c "$cpu" chrt --idle 0 sh -c 'while :; do :; done' &
        PIDS+=($!)
    done
fi

wait_http() { # URL
    python3 - "$1" <<'EOF'
import sys, time, urllib.request, urllib.error
for _ in range(300):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1); sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit(f"{sys.argv[1]} did not come up")
EOF
}

step "starting wasmtime serve (echo component) on 127.0.0.1:$WASMTIME_PORT"
"${SERVE[@]}" wasmtime serve -S cli --addr "127.0.0.1:$WASMTIME_PORT" "$HELLO" >"$WORK/wasmtime.log" 2>&1 &
WASMTIME_PID=$!
PIDS+=($!)
WASMTIME_URL="http://127.0.0.1:$WASMTIME_PORT"
wait_http "$WASMTIME_URL/"

step "starting the upstream API (checks X-API-Key) on 127.0.0.1:$UPSTREAM_PORT"
"${UPSTREAM_ON[@]}" "$ROOT/target/release/examples/bench-upstream" "127.0.0.1:$UPSTREAM_PORT" "$UPSTREAM_KEY" \
    >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=($!)
UPSTREAM="http://127.0.0.1:$UPSTREAM_PORT"
wait_http "$UPSTREAM/"

step "starting the hand-written service (the same GET without keyhole) on 127.0.0.1:$SERVICE_PORT"
"${SERVE[@]}" "$ROOT/target/release/examples/bench-service" "127.0.0.1:$SERVICE_PORT" "$UPSTREAM/" \
    "$UPSTREAM_KEY" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
PIDS+=($!)
SERVICE="http://127.0.0.1:$SERVICE_PORT"
wait_http "$SERVICE/fetch"

step "setting up keyhole: echo, an API-key connection to the upstream, a token"
"$KEYHOLE" functions upload "$WASM/echo.wasm" --name echo >/dev/null 2>&1
"$KEYHOLE" services add --name upstream --auth api-key --base-url "$UPSTREAM" \
    --key-header X-API-Key >/dev/null
"$KEYHOLE" connections add upstream --service upstream >/dev/null
echo "X-API-Key=$UPSTREAM_KEY" | "$KEYHOLE" connections connect upstream --params-stdin >/dev/null
"$KEYHOLE" functions upload "$WASM/hello_http.wasm" --name fetch --grant upstream >/dev/null 2>&1
TOKEN=$("$KEYHOLE" tokens create --scope invoke --label bench 2>/dev/null)
"${SERVE[@]}" "$KEYHOLE" serve --listen "127.0.0.1:$KEYHOLE_PORT" --rate-limit 0 \
    >"$WORK/keyhole.log" 2>&1 &
KEYHOLE_PID=$!
PIDS+=($!)
KEYHOLE_URL="http://127.0.0.1:$KEYHOLE_PORT"
wait_http "$KEYHOLE_URL/healthz"

# --- measuring -----------------------------------------------------------------------
# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)
# run NAME CONCURRENCY SERVER_PID oha-args... -> prints "rps p50_us p90_us p99_us success%
# cpu_us_per_request" (the server's CPU time over the run per answered request; unlike the
# latencies it does not depend on how the scheduler interleaves processes) and keeps JSON
run() {
    local name=$1 c=$2 pid=$3
    shift 3
    local before after
    before=$(cpu_ticks "$pid")
    "${CLIENT[@]}" oha --no-tui --output-format json -z "$DURATION" -c "$c" "$@" >"$WORK/$name-$c.json"
    after=$(cpu_ticks "$pid")
    python3 - "$WORK/$name-$c.json" "$((after - before))" "$CLK_TCK" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
cpu_s = int(sys.argv[2]) / int(sys.argv[3])
s, p = d["summary"], d["latencyPercentiles"]
us = lambda v: (v or 0) * 1e6
codes = d.get("statusCodeDistribution", {})
ok = sum(n for code, n in codes.items() if code.startswith("2"))
# Requests still open when the -z deadline ends are cut off by oha, not failures.
errors = {k: n for k, n in d.get("errorDistribution", {}).items() if "deadline" not in k}
total = sum(codes.values()) + sum(errors.values())
print(f'{s["requestsPerSec"]:.0f} {us(p["p50"]):.0f} {us(p["p90"]):.0f} {us(p["p99"]):.0f} {100 * ok / max(total, 1):.2f} {1e6 * cpu_s / max(sum(codes.values()), 1):.0f}')
EOF
}
warm() { "${LOAD[@]}" oha --no-tui -n 500 -c 8 "$@" >/dev/null; }

AUTH=(-H "Authorization: Bearer $TOKEN")
ECHO_ARGS=(-m POST -T application/json -d "$BODY" "${AUTH[@]}" "$KEYHOLE_URL/v1/functions/echo/invoke")
HELLO_ARGS=(-m POST -T application/json -d "$BODY" "$WASMTIME_URL/")
FETCH_ARGS=(-m POST -T application/json -d '{"connection":"upstream","target":"/"}' "${AUTH[@]}" "$KEYHOLE_URL/v1/functions/fetch/invoke")
DIRECT_ARGS=(-H "X-API-Key: $UPSTREAM_KEY" "$UPSTREAM/")
REFUSED_ARGS=(-m POST -T application/json -d '{"connection":"not-granted","target":"/"}' "${AUTH[@]}" "$KEYHOLE_URL/v1/functions/fetch/invoke")
SVC_FETCH_ARGS=(-m POST -T application/json -d '{"connection":"upstream","target":"/"}' "$SERVICE/fetch")
SVC_REFUSED_ARGS=(-m POST -T application/json -d '{"connection":"not-granted","target":"/"}' "$SERVICE/refused")
# bench-pairs SECONDS TOKEN URL_A BODY_A EXPECT_A URL_B BODY_B EXPECT_B: refused (A) and
# fetch (B) alternating; prints "p50_a p50_b p99_a p99_b pairs failures"
# DURATION is oha's (5s, 500ms, 1m); bench-pairs takes seconds.
PAIRS_SECONDS=$(python3 -c '
import re, sys
m = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", sys.argv[1])
if not m: sys.exit(f"DURATION={sys.argv[1]!r}: expected e.g. 5s, 500ms or 1m")
print(float(m[1]) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m[2]])' "$DURATION")
PAIRS_KEYHOLE=("$PAIRS_SECONDS" "$TOKEN"
    "$KEYHOLE_URL/v1/functions/fetch/invoke" '{"connection":"not-granted","target":"/"}' access-denied
    "$KEYHOLE_URL/v1/functions/fetch/invoke" '{"connection":"upstream","target":"/"}' '"status":200')
PAIRS_SERVICE=("$PAIRS_SECONDS" -
    "$SERVICE/refused" '{"connection":"not-granted","target":"/"}' access-denied
    "$SERVICE/fetch" '{"connection":"upstream","target":"/"}' '"status":200')
# pairs ARGS... -> bench-pairs' line, or the script stops with why (a process
# substitution's failure would otherwise go unnoticed under set -e)
pairs() {
    local out
    out=$("${LOAD[@]}" "$ROOT/target/release/examples/bench-pairs" "$@") || {
        echo "bench-pairs failed (arguments: $*)" >&2
        exit 1
    }
    read -r _ _ _ _ n _ <<<"$out"
    if [ "${n:-0}" = 0 ]; then
        echo "bench-pairs timed no pair of requests: $out (arguments: $*)" >&2
        exit 1
    fi
    echo "$out"
}

# Each case must do what it claims: the upstream refuses a GET without the key, answers
# one with it, and fetch gets its 200 only because keyhole injected the key.
python3 - "$UPSTREAM/" "$UPSTREAM_KEY" "$KEYHOLE_URL/v1/functions/fetch/invoke" "$TOKEN" "$SERVICE" <<'EOF'
import json, sys, urllib.request, urllib.error
upstream, key, fetch, token, service = sys.argv[1:]
def status(req):
    try:
        return urllib.request.urlopen(req, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
assert status(urllib.request.Request(upstream)) == 401, "the upstream must refuse a GET without the key"
assert status(urllib.request.Request(upstream, headers={"X-API-Key": key})) == 200, "the upstream must accept the key"
req = urllib.request.Request(fetch, data=b'{"connection":"upstream","target":"/"}', headers={
    "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, timeout=5))
assert out.get("status") == 200, f"fetch must reach the upstream with the key, got {out}"
req = urllib.request.Request(fetch, data=b'{"connection":"not-granted","target":"/"}', headers={
    "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, timeout=5))
assert out.get("error") == "access-denied", f"fetch on an ungranted connection must be refused, got {out}"
for path, want in (("/fetch", 200), ("/refused", None)):
    req = urllib.request.Request(service + path, data=b'{"connection":"upstream","target":"/"}',
                                 headers={"Content-Type": "application/json"})
    out = json.load(urllib.request.urlopen(req, timeout=5))
    assert out.get("status") == want, f"the hand-written service's {path} must answer status {want}, got {out}"
EOF

step "warming up"
warm "${ECHO_ARGS[@]}"; warm "${HELLO_ARGS[@]}"; warm "${FETCH_ARGS[@]}"; warm "${REFUSED_ARGS[@]}"; warm "${DIRECT_ARGS[@]}"
warm "${SVC_FETCH_ARGS[@]}"; warm "${SVC_REFUSED_ARGS[@]}"

# median V... -> the median, rounded
median() { python3 -c 'import statistics, sys; print(round(statistics.median(float(v) for v in sys.argv[1:]), 2 if "." in "".join(sys.argv[1:]) else None))' "$@"; }
# spread V... -> "min–max"
spread() { python3 -c 'import sys; v = sorted(float(x) for x in sys.argv[1:]); print(f"{v[0]:g}–{v[-1]:g}")' "$@"; }
ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}')"; }

{
    echo "### Run of $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "- machine: $(python3 -c 'import platform; print(platform.processor() or platform.machine())') $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //'), $NCPU CPUs, $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}'), $(uname -sr)"
    echo "- placement: $PLACEMENT; $ROUNDS alternating rounds of $DURATION per case, medians shown; body \`$BODY\`"
    echo "- $(wasmtime --version), $(oha --version), $(rustc --version), keyhole $("$KEYHOLE" --version | awk '{print $2}') (release, --rate-limit 0)"
    echo
    echo "| concurrency | keyhole echo req/s | p50 µs | p99 µs | CPU µs/req | wasmtime serve req/s | p50 µs | p99 µs | CPU µs/req | keyhole/wasmtime req/s (per-round range) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} | tee "$REPORT"

for c in $CONCURRENCY; do
    step "concurrency $c"
    K_RPS=() K_P50=() K_P99=() K_CPU=() W_RPS=() W_P50=() W_P99=() W_CPU=() RATIOS=() note=""
    for round in $(seq "$ROUNDS"); do
        read -r k_rps k_p50 _ k_p99 k_ok k_cpu < <(run keyhole "$c" "$KEYHOLE_PID" "${ECHO_ARGS[@]}")
        read -r w_rps w_p50 _ w_p99 w_ok w_cpu < <(run wasmtime "$c" "$WASMTIME_PID" "${HELLO_ARGS[@]}")
        K_RPS+=("$k_rps") K_P50+=("$k_p50") K_P99+=("$k_p99") K_CPU+=("$k_cpu")
        W_RPS+=("$w_rps") W_P50+=("$w_p50") W_P99+=("$w_p99") W_CPU+=("$w_cpu")
        RATIOS+=("$(ratio "$k_rps" "$w_rps")")
        if [ "$k_ok" != "100.00" ]; then note+=" (round $round: keyhole ${k_ok}% 2xx)"; fi
        if [ "$w_ok" != "100.00" ]; then note+=" (round $round: wasmtime ${w_ok}% 2xx)"; fi
        echo "  round $round: keyhole $k_rps req/s, wasmtime $w_rps req/s" >&2
    done
    echo "| $c | $(median "${K_RPS[@]}") | $(median "${K_P50[@]}") | $(median "${K_P99[@]}") | $(median "${K_CPU[@]}") | $(median "${W_RPS[@]}") | $(median "${W_P50[@]}") | $(median "${W_P99[@]}") | $(median "${W_CPU[@]}") | **$(median "${RATIOS[@]}")** ($(spread "${RATIOS[@]}"))$note |" | tee -a "$REPORT"
done

step "authenticated GET through keyhole vs the same GET made directly (concurrency 1)"
# The direct GET runs twice: from the load generator's CPU (what a client calling the API
# itself sees; with PIN=1 that crosses CPUs, which on a VM costs ~50 µs per wake-up) and
# from the servers' CPU, where keyhole makes its own GET: the like-for-like baseline.
D_P50=() L_P50=() R_P50=() F_P50=() D_RPS=() L_RPS=() R_RPS=() F_RPS=()
D_P99=() L_P99=() R_P99=() F_P99=() D_CPU=() L_CPU=() R_CPU=() F_CPU=()
SR_P50=() SF_P50=() SR_RPS=() SF_RPS=() SR_P99=() SF_P99=() SR_CPU=() SF_CPU=()
ADDED=() WHOLE=() CPU_ADDED=() SVC_ADDED=() SVC_CALL=() fetch_note=""
PR_P50=() PF_P50=() PSR_P50=() PSF_P50=() P_ADDED=() P_SVC_CALL=() P_SVC_ADDED=() P_PAIRS=()
for round in $(seq "$ROUNDS"); do
    read -r d_rps d_p50 _ d_p99 d_ok d_cpu < <(run direct 1 "$UPSTREAM_PID" "${DIRECT_ARGS[@]}")
    CLIENT=("${SERVE[@]}")
    read -r l_rps l_p50 _ l_p99 l_ok l_cpu < <(run direct-local 1 "$UPSTREAM_PID" "${DIRECT_ARGS[@]}")
    CLIENT=("${LOAD[@]}")
    read -r r_rps r_p50 _ r_p99 r_ok r_cpu < <(run refused 1 "$KEYHOLE_PID" "${REFUSED_ARGS[@]}")
    read -r f_rps f_p50 _ f_p99 f_ok f_cpu < <(run fetch 1 "$KEYHOLE_PID" "${FETCH_ARGS[@]}")
    read -r sr_rps sr_p50 _ sr_p99 sr_ok sr_cpu < <(run svc-refused 1 "$SERVICE_PID" "${SVC_REFUSED_ARGS[@]}")
    read -r sf_rps sf_p50 _ sf_p99 sf_ok sf_cpu < <(run svc-fetch 1 "$SERVICE_PID" "${SVC_FETCH_ARGS[@]}")
    SR_P50+=("$sr_p50") SF_P50+=("$sf_p50") SR_RPS+=("$sr_rps") SF_RPS+=("$sf_rps")
    SR_P99+=("$sr_p99") SF_P99+=("$sf_p99") SR_CPU+=("$sr_cpu") SF_CPU+=("$sf_cpu")
    SVC_CALL+=("$((sf_p50 - sr_p50))") SVC_ADDED+=("$(((f_p50 - r_p50) - (sf_p50 - sr_p50)))")
    D_P50+=("$d_p50") L_P50+=("$l_p50") R_P50+=("$r_p50") F_P50+=("$f_p50")
    D_RPS+=("$d_rps") L_RPS+=("$l_rps") R_RPS+=("$r_rps") F_RPS+=("$f_rps")
    D_P99+=("$d_p99") L_P99+=("$l_p99") R_P99+=("$r_p99") F_P99+=("$f_p99")
    D_CPU+=("$d_cpu") L_CPU+=("$l_cpu") R_CPU+=("$r_cpu") F_CPU+=("$f_cpu")
    ADDED+=("$((f_p50 - r_p50 - l_p50))") WHOLE+=("$((f_p50 - d_p50))") CPU_ADDED+=("$((f_cpu - r_cpu))")
    for pair in "fetch invocations:$f_ok" "refused invocations:$r_ok" "direct GETs:$d_ok" "direct GETs from the servers' CPU:$l_ok" "the service's fetches:$sf_ok" "the service's refusals:$sr_ok"; do
        if [ "${pair##*:}" != "100.00" ]; then fetch_note+=" round $round: only ${pair##*:}% of ${pair%:*} answered 2xx."; fi
    done
    echo "  round $round: direct $d_p50 µs, direct from the servers' CPU $l_p50 µs, refused $r_p50 µs, fetch $f_p50 µs, service refused $sr_p50 µs, service fetch $sf_p50 µs (p50)" >&2
    if [ "$PAIRED" = 1 ]; then
        line=$(pairs "${PAIRS_KEYHOLE[@]}")
        read -r pr_p50 pf_p50 _ _ p_pairs p_fail <<<"$line"
        line=$(pairs "${PAIRS_SERVICE[@]}")
        read -r psr_p50 psf_p50 _ _ ps_pairs ps_fail <<<"$line"
        PR_P50+=("$pr_p50") PF_P50+=("$pf_p50") PSR_P50+=("$psr_p50") PSF_P50+=("$psf_p50")
        P_ADDED+=("$((pf_p50 - pr_p50 - l_p50))") P_SVC_CALL+=("$((psf_p50 - psr_p50))")
        P_SVC_ADDED+=("$(((pf_p50 - pr_p50) - (psf_p50 - psr_p50)))") P_PAIRS+=("$p_pairs")
        if [ "$p_fail" != 0 ]; then fetch_note+=" round $round: $p_fail interleaved keyhole requests failed."; fi
        if [ "$ps_fail" != 0 ]; then fetch_note+=" round $round: $ps_fail interleaved service requests failed."; fi
        echo "  round $round, interleaved: refused $pr_p50 µs, fetch $pf_p50 µs ($p_pairs pairs), service refused $psr_p50 µs, service fetch $psf_p50 µs ($ps_pairs pairs) (p50)" >&2
    fi
done
{
    echo
    echo "| concurrency 1 (medians of $ROUNDS rounds) | req/s | p50 µs | p99 µs | server CPU µs/req |"
    echo "|---|---:|---:|---:|---:|"
    echo "| GET upstream directly (with the API key), from the load generator's CPU | $(median "${D_RPS[@]}") | $(median "${D_P50[@]}") | $(median "${D_P99[@]}") | $(median "${D_CPU[@]}") (upstream) |"
    echo "| the same, from the servers' CPU (where keyhole's own GET runs) | $(median "${L_RPS[@]}") | $(median "${L_P50[@]}") | $(median "${L_P99[@]}") | $(median "${L_CPU[@]}") (upstream) |"
    echo "| invoke \`fetch\` on a connection it was not granted (the invocation without the call) | $(median "${R_RPS[@]}") | $(median "${R_P50[@]}") | $(median "${R_P99[@]}") | $(median "${R_CPU[@]}") (keyhole) |"
    echo "| invoke \`fetch\` = hello-http making the same GET through connection \`upstream\` | $(median "${F_RPS[@]}") | $(median "${F_P50[@]}") | $(median "${F_P99[@]}") | $(median "${F_CPU[@]}") (keyhole) |"
    echo "| hand-written service (axum + reqwest), \`/refused\`: the input read, no call | $(median "${SR_RPS[@]}") | $(median "${SR_P50[@]}") | $(median "${SR_P99[@]}") | $(median "${SR_CPU[@]}") (service) |"
    echo "| hand-written service, \`/fetch\`: the same GET with the key, made by the service | $(median "${SF_RPS[@]}") | $(median "${SF_P50[@]}") | $(median "${SF_P99[@]}") | $(median "${SF_CPU[@]}") (service) |"
    echo
    echo "- whole path added over the direct GET (fetch − direct), p50: $(median "${WHOLE[@]}") µs (per round: ${WHOLE[*]})"
    echo "- added by the authenticated call, like for like (fetch − refused − direct from the servers' CPU), p50: **$(median "${ADDED[@]}") µs** (per round: ${ADDED[*]})"
    echo "- keyhole CPU time the authenticated call adds (fetch − refused, keyhole's process only): $(median "${CPU_ADDED[@]}") µs per request (per round: ${CPU_ADDED[*]})"
    echo "- what the same GET costs a hand-written service (its /fetch − /refused), p50: $(median "${SVC_CALL[@]}") µs (per round: ${SVC_CALL[*]})"
    echo "- added by keyhole over making the call in a hand-written service ((fetch − refused) − (service /fetch − /refused)), p50: **$(median "${SVC_ADDED[@]}") µs** (per round: ${SVC_ADDED[*]})"
    if [ "$PAIRED" = 1 ]; then
        echo
        echo "Interleaved (\`bench-pairs\`: refused and fetch alternating request by request, $PAIRS_SECONDS s per round, concurrency 1, from the load generator's CPU; the same for the service's /refused and /fetch):"
        echo
        echo "- keyhole p50: refused $(median "${PR_P50[@]}") µs, fetch $(median "${PF_P50[@]}") µs (pairs per round: ${P_PAIRS[*]}); hand-written service p50: /refused $(median "${PSR_P50[@]}") µs, /fetch $(median "${PSF_P50[@]}") µs"
        echo "- added by the authenticated call, like for like, interleaved (fetch − refused − direct from the servers' CPU), p50: **$(median "${P_ADDED[@]}") µs** (per round: ${P_ADDED[*]})"
        echo "- what the same GET costs the hand-written service, interleaved (/fetch − /refused), p50: $(median "${P_SVC_CALL[@]}") µs (per round: ${P_SVC_CALL[*]})"
        echo "- added by keyhole over the hand-written service, interleaved, p50: **$(median "${P_SVC_ADDED[@]}") µs** (per round: ${P_SVC_ADDED[*]})"
    fi
    if [ -n "$fetch_note" ]; then
        echo "- WARNING:$fetch_note"
    fi
} | tee -a "$REPORT"

if [ "$GATEWAY" = 1 ]; then
    step "authenticated call in one process (cargo bench --bench gateway)"
    # Same CPU placement as the servers above; criterion's own samples are kept short,
    # the printed p50s come from the bench's interleaved rounds. Run twice: with the
    # upstream on a task of the bench's thread, then with the upstream API process above
    # (each call switches processes, as in keyhole serve, but no HTTP server in front).
    gateway() { # OUT [env...]
        local out=$1
        shift
        env "$@" "${SERVE[@]}" cargo bench --quiet -p keyhole-host --bench gateway -- \
            --warm-up-time 1 --measurement-time 2 >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    }
    gateway "$WORK/gateway.txt"
    gateway "$WORK/gateway-process.txt" GATEWAY_UPSTREAM="127.0.0.1:$UPSTREAM_PORT" \
        GATEWAY_UPSTREAM_KEY="$UPSTREAM_KEY"
    {
        echo
        echo "keyhole in one process (\`cargo bench -p keyhole-host --bench gateway\`, one thread, no HTTP server in front), the upstream on a task of the same thread:"
        echo
        echo '```'
        grep -A3 '^authenticated call added latency' "$WORK/gateway.txt"
        echo '```'
        echo
        echo "The same with the upstream API process above (CPUs $UPSTREAM_CPUS_SHOWN): each call switches processes, as in \`keyhole serve\`:"
        echo
        echo '```'
        grep -A3 '^authenticated call added latency' "$WORK/gateway-process.txt"
        echo '```'
    } | tee -a "$REPORT"
fi
echo >&2
echo "report written to $REPORT" >&2
