#!/usr/bin/env bash
# keyhole demo, end to end on a fresh machine: install the wasm target, build keyhole and
# the plugins, then run the README walkthrough "Get notified of new YouTube comments"
# against a local stand-in of the YouTube Data API and a local webhook receiver.
# Uses a throwaway data directory unless KEYHOLE_HOME is set.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
YT_PORT="${YT_PORT:-18480}"
HOOK_PORT="${HOOK_PORT:-18481}"
VIDEO=dQw4w9WgXcQ

for tool in cargo rustup curl; do
    command -v "$tool" >/dev/null || { echo "demo: needs $tool on PATH; install it and run again" >&2; exit 1; }
done

step "installing the wasm32-wasip2 target"
rustup target add wasm32-wasip2

step "building keyhole and the local stand-ins (the first build compiles wasmtime, with LTO: 10–15 minutes on two cores)"
cargo build --release -p keyhole-host --bin keyhole -p keyhole-tests --bin keyhole-standin
KEYHOLE="$PWD/target/release/keyhole"

step "building the plugins for wasm32-wasip2"
(cd plugins && cargo build --target wasm32-wasip2 --release)
WASM="$PWD/plugins/target/wasm32-wasip2/release"

export KEYHOLE_HOME="${KEYHOLE_HOME:-$(mktemp -d)}"
echo "data directory: $KEYHOLE_HOME"

step "starting the stand-in YouTube API (:$YT_PORT) and webhook receiver (:$HOOK_PORT)"
./target/release/keyhole-standin --api-key demo-yt-key --youtube-port "$YT_PORT" --webhook-port "$HOOK_PORT" --video "$VIDEO" &
PIDS=$!
trap 'kill $PIDS 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HOOK_PORT/control/received" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$HOOK_PORT/control/received" >/dev/null || {
    echo "demo: the stand-ins did not come up on ports $YT_PORT and $HOOK_PORT; if they are taken, set YT_PORT and HOOK_PORT" >&2
    exit 1
}

step "hello: upload echo, run it"
"$KEYHOLE" functions upload "$WASM/echo.wasm" --name echo
"$KEYHOLE" run echo --input '{"hello":"keyhole"}'

step "1. the youtube connection (API-key preset, pointed at the stand-in)"
"$KEYHOLE" connections add youtube --service youtube-api-key --base-url "http://127.0.0.1:$YT_PORT"
echo "key=demo-yt-key" | "$KEYHOLE" connections connect youtube --params-stdin

step "2. the webhook connection (its URL is a secret: sealed, never shown)"
"$KEYHOLE" connections add alerts --service webhook
echo "url=http://127.0.0.1:$HOOK_PORT/hook/demo-secret-path" | "$KEYHOLE" connections connect alerts --params-stdin
"$KEYHOLE" connections list

step "3. upload the two plugins with their grants"
"$KEYHOLE" functions upload "$WASM/youtube_comments.wasm" --name youtube-comments --grant youtube
"$KEYHOLE" functions upload "$WASM/youtube_watch.wasm" --name youtube-watch --grant youtube --grant alerts

step "4. run by hand: list the comments, then the first watch run (baseline: remember, notify nothing)"
"$KEYHOLE" run youtube-comments --input "{\"video_id\":\"$VIDEO\",\"max\":10}"
INPUT="{\"video_id\":\"$VIDEO\",\"notify\":\"alerts\"}"
"$KEYHOLE" run youtube-watch --input "$INPUT"

step "someone comments on the video"
curl -s -X POST "http://127.0.0.1:$YT_PORT/control/comment?author=Ann&text=Great%20tutorial%2C%20thanks%21"; echo

step "5. schedule it every 5 minutes (and, for this demo, every 2 seconds) under keyhole serve"
"$KEYHOLE" schedules add youtube-watch --function youtube-watch --every 5m --input "$INPUT"
"$KEYHOLE" schedules add demo-fast --function youtube-watch --every 2s --input "$INPUT"
"$KEYHOLE" serve --listen 127.0.0.1:0 &
PIDS="$PIDS $!"
sleep 5
kill -TERM "$!" && wait "$!" || true
"$KEYHOLE" schedules list

step "what the webhook received (exactly one notification, no duplicates)"
curl -s "http://127.0.0.1:$HOOK_PORT/control/received"; echo

step "keyhole logs --details (outbound calls recorded; the API key and webhook path never appear)"
"$KEYHOLE" logs --details --limit 4

echo
echo "demo finished. Try: KEYHOLE_HOME=$KEYHOLE_HOME $KEYHOLE --help"
