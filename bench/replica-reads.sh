#!/usr/bin/env bash
# Metadata reads on a replica of a shared bucket: every read asks storage
# whether another replica wrote since (a listing of the index revisions newer
# than the cached one). Starts moto (the test suite's S3 server) and two
# registries on one bucket, publishes on one, and loads the other with wrk.
# Everything on 127.0.0.1; the load stops after DURATION seconds.
#
#   bench/replica-reads.sh            # builds and uses the release binary
#   WHARF_BIN=target/debug/wharf-registry bench/replica-reads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "replica-reads: wrk is required (Debian: apt-get install wrk)" >&2; exit 1; }
TOOLS_DIR="${WHARF_TEST_TOOLS:-$HOME/.cache/wharf/test-tools}"
[ -x "$TOOLS_DIR/venv/bin/python" ] || { echo "replica-reads: run tests/install-clients.sh first (moto)" >&2; exit 1; }
BIN="${WHARF_BIN:-target/release/wharf-registry}"
if [ -z "${WHARF_BIN:-}" ]; then cargo build --release -p wharf-registry >&2; fi
DURATION="${DURATION:-10}"

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 300); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

S3_PORT=$(free_port)
"$TOOLS_DIR/venv/bin/python" tests/s3-server.py --host 127.0.0.1 --port "$S3_PORT" >/dev/null 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$S3_PORT/"
curl -fs -X PUT "http://127.0.0.1:$S3_PORT/wharf" >/dev/null

mkdir -p "$WORK/secrets/acme-s3"
printf 'bench-key' >"$WORK/secrets/acme-s3/accessKeyId"
printf 'bench-secret' >"$WORK/secrets/acme-s3/secretAccessKey"
cat >"$WORK/wharf.yaml" <<EOF
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage:
    s3: {bucket: wharf, region: us-east-1, endpoint: "http://127.0.0.1:$S3_PORT", allowHttp: true, credentialsSecretRef: {name: acme-s3}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: main}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
EOF

start_replica() {
    local port=$1 data="$WORK/data-$1"
    mkdir -p "$data"
    WHARF_ADMIN_TOKEN=bench-admin WHARF_TOKEN_SIGNING_KEY="a bench signing key of 32 bytes or more" \
        "$BIN" serve --config "$WORK/wharf.yaml" --data "$data" --secrets-dir "$WORK/secrets" \
        --listen "127.0.0.1:$port" >"$WORK/replica-$port.log" 2>&1 &
    PIDS+=($!)
    wait_for "http://127.0.0.1:$port/healthz"
}
A=$(free_port); start_replica "$A"
B=$(free_port); start_replica "$B"

for version in 1.0.0 1.1.0 1.2.0; do
    body="tool $version"
    sum=$(printf '%s' "$body" | sha256sum | cut -d' ' -f1)
    curl -fs -o /dev/null -X PUT -H "Authorization: Bearer bench-admin" -H "X-Checksum-Sha256: $sum" \
        --data-binary "$body" "http://127.0.0.1:$A/generic/main/acme/tool/$version/tool.txt"
done
URL="http://127.0.0.1:$B/generic/main/acme/tool"
curl -fs "$URL" | grep -q '"1.2.0"' || { echo "replica B does not list what A published" >&2; exit 1; }

echo "## Metadata reads on a replica (GET $URL, revalidated against S3 on every read)"
wrk -t1 -c16 -d"${DURATION}s" --latency "$URL"
