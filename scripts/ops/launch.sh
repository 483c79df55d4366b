#!/usr/bin/env bash
# Runs one subcommand of strangler-ops (the Rust binary behind scripts/migrate-data, shift,
# rollout, rollback, status, cutover and complete), building the release binary first when it is missing or
# older than its sources. Paths given on the command line are read from the caller's directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release/strangler-ops"   # where cargo builds it

stale() {
  [[ ! -x "$bin" ]] && return 0
  [[ -n "$(find "$root/scripts/ops/src" "$root/scripts/ops/Cargo.toml" "$root/strangler-proxy/src" \
      "$root/monolith/src" "$root/Cargo.lock" -newer "$bin" -type f -print -quit 2>/dev/null)" ]]
}

if stale; then
  echo "==> building strangler-ops (release; the first build takes a few minutes)" >&2
  cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" -p strangler-ops >&2
  # Cargo leaves an up-to-date binary alone; mark it checked so the next run skips cargo.
  touch "$bin"
fi
exec "$bin" "$@"
