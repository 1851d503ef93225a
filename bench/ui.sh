#!/usr/bin/env bash
# Web interface benchmark: server time of the package page of a package with 1,000
# versions and of a search over 10,000 packages, and the package page's weight.
# The release registry on loopback with its own data folder, seeded over the npm API
# (bench/ui_seed.py); wrk with one connection (the time one page takes the server) and
# with 8 (what one core serves). The server is pinned to one CPU, wrk to the other;
# both are ended by PID on exit. Results: bench/out/ui/results.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT=$BENCH_DIR/out/ui
WHARF_BIN=${WHARF_BIN:-$ROOT/target/release/wharf-registry}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_PACKAGES=${BENCH_PACKAGES:-10000}
BENCH_VERSIONS=${BENCH_VERSIONS:-1000}
BENCH_SERVER_CPU=${BENCH_SERVER_CPU:-0}
BENCH_LOAD_CPU=${BENCH_LOAD_CPU:-1}
ADMIN_TOKEN=bench-admin-$RANDOM$RANDOM$RANDOM

log() { printf '[bench-ui %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
if [ "$BENCH_SKIP_BUILD" != 1 ]; then
  log "building the release registry"
  (cd "$ROOT" && cargo build --release --locked -p wharf-registry)
fi
[ -x "$WHARF_BIN" ] || die "$WHARF_BIN is missing"

rm -rf "$OUT" && mkdir -p "$OUT/data"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
cat >"$OUT/config.yaml" <<YAML
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: bench}
spec:
  storage: {filesystem: {path: "$OUT/data"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: main}
spec:
  domainRef: {name: bench}
  access: {read: [{kind: Anonymous}]}
YAML
WHARF_ADMIN_TOKEN=$ADMIN_TOKEN RUST_LOG=warn taskset -c "$BENCH_SERVER_CPU" "$WHARF_BIN" serve \
  --config "$OUT/config.yaml" --listen "127.0.0.1:$PORT" --audit-log off >"$OUT/wharf.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "$URL/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "$URL/readyz" >/dev/null || die "the registry did not start (see $OUT/wharf.log)"

log "seeding $BENCH_PACKAGES packages and $BENCH_VERSIONS versions of big"
T0=$(date +%s)
python3 "$BENCH_DIR/ui_seed.py" "$URL" main "$ADMIN_TOKEN" "$BENCH_PACKAGES" "$BENCH_VERSIONS"
log "seeded in $(( $(date +%s) - T0 ))s"

PAGE="/ui/repositories/main/packages/npm/big"
declare -A URLS=(
  [package]="$PAGE"
  [package-all]="$PAGE?all=true"
  [search]="/ui/search?q=pkg-0999"
  [search-broad]="/ui/search?q=pkg"
  [explain]="/ui/repositories/main/explain/npm/big?version=1.5.5"
)
ORDER="package package-all search search-broad explain"
for name in $ORDER; do
  status=$(curl -s -o "$OUT/$name.html" -w '%{http_code}' "$URL${URLS[$name]}")
  [ "$status" = 200 ] || die "$name answered $status"
done
grep -q 'pkg-09990' "$OUT/search.html" || die "the search did not find pkg-09990"
grep -q '1.9.99' "$OUT/package-all.html" || die "the package page lacks version 1.9.99"

weight() { wc -c <"$1" | tr -d ' '; }
gzipped() { gzip -c "$1" | wc -c | tr -d ' '; }
curl -s -o "$OUT/wharf.css" "$URL/ui/assets/wharf.css"
curl -s -o "$OUT/wharf.js" "$URL/ui/assets/wharf.js"

measure() { # NAME CONNECTIONS
  local out=$OUT/wrk.$1.c$2.txt
  taskset -c "$BENCH_LOAD_CPU" wrk -t1 "-c$2" -d2s "$URL${URLS[$1]}" >/dev/null 2>&1 || true
  taskset -c "$BENCH_LOAD_CPU" wrk -t1 "-c$2" "-d${BENCH_SECONDS}s" --latency "$URL${URLS[$1]}" >"$out" 2>&1
  local rps p50 p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  grep -q 'Non-2xx' "$out" && die "non-2xx answers in $out"
  printf '%s\t%s\t%s\t%s\n' "$rps" "$p50" "$p99" "$(weight "$OUT/$1.html")"
}

{
  echo "# Web interface benchmark"
  echo
  echo "$(nproc) CPUs, server on CPU $BENCH_SERVER_CPU, wrk on CPU $BENCH_LOAD_CPU, ${BENCH_SECONDS}s per row after 2s of warm-up."
  echo "$BENCH_PACKAGES packages, and \`big\` with $BENCH_VERSIONS versions, in one Repository on a local folder."
  echo
  echo "| page | connections | req/s | p50 | p99 | HTML bytes |"
  echo "|---|---:|---:|---:|---:|---:|"
  for name in $ORDER; do
    for connections in 1 8; do
      IFS=$'\t' read -r rps p50 p99 bytes < <(measure "$name" "$connections")
      echo "| $name (\`${URLS[$name]}\`) | $connections | $rps | $p50 | $p99 | $bytes |"
    done
  done
  echo
  echo "Page weight of the package page (the newest 100 versions of $BENCH_VERSIONS):"
  echo "HTML $(weight "$OUT/package.html") bytes ($(gzipped "$OUT/package.html") gzipped), stylesheet $(weight "$OUT/wharf.css") bytes, script $(weight "$OUT/wharf.js") bytes, nothing else (no fonts, images or third-party requests)."
  echo "With every version (\`?all=true\`): HTML $(weight "$OUT/package-all.html") bytes ($(gzipped "$OUT/package-all.html") gzipped)."
} >"$OUT/results.md"
cat "$OUT/results.md"
