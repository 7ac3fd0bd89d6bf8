#!/usr/bin/env bash
# keyhole demo, end to end on a fresh machine: install the wasm target, build the host
# and the example plugins, upload `echo`, run it, and show the invocation log.
# Uses a throwaway data directory unless KEYHOLE_HOME is set.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "installing the wasm32-wasip2 target"
rustup target add wasm32-wasip2

step "building keyhole (first build compiles wasmtime: several minutes)"
cargo build --release -p keyhole-host --bin keyhole
KEYHOLE="$PWD/target/release/keyhole"

step "building the example plugins for wasm32-wasip2"
(cd plugins && cargo build --target wasm32-wasip2 --release)
WASM="$PWD/plugins/target/wasm32-wasip2/release"

export KEYHOLE_HOME="${KEYHOLE_HOME:-$(mktemp -d)}"
echo "data directory: $KEYHOLE_HOME"

step "keyhole functions upload echo.wasm --name echo"
"$KEYHOLE" functions upload "$WASM/echo.wasm" --name echo

step "keyhole run echo --input '{\"hello\":\"keyhole\"}'"
"$KEYHOLE" run echo --input '{"hello":"keyhole"}'

step "keyhole functions list"
"$KEYHOLE" functions list

step "keyhole logs --details"
"$KEYHOLE" logs --details

step "keyhole services list (the preset catalog)"
"$KEYHOLE" services list

echo
echo "demo finished. Try: KEYHOLE_HOME=$KEYHOLE_HOME $KEYHOLE --help"
