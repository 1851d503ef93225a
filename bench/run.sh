#!/usr/bin/env bash
# Wharf benchmark: Wharf vs nginx (same bytes, static) vs Verdaccio, pypiserver, devpi.
# Loopback only; servers pinned to one CPU, wrk to the other; every server this
# script starts is ended by PID in the EXIT trap. See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT=$BENCH_DIR/out
RUN=$OUT/run              # per-run state, wiped at start
ART=$OUT/artifacts        # generated artifacts, cached between runs
GEN="python3 $BENCH_DIR/gen.py"

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-2}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_VERSIONS=${BENCH_VERSIONS:-50}
BENCH_ARTIFACT_BYTES=${BENCH_ARTIFACT_BYTES:-1048576}
BENCH_BIG_MIB=${BENCH_BIG_MIB:-200}
BENCH_NPM_BIG=${BENCH_NPM_BIG:-1}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-5}
BENCH_ONLY_PEERS=${BENCH_ONLY_PEERS:-0}
BENCH_SKIP_PEERS=${BENCH_SKIP_PEERS:-0}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BENCH_SERVER_CPU=${BENCH_SERVER_CPU:-0}
BENCH_LOAD_CPU=${BENCH_LOAD_CPU:-1}
BENCH_WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-10}
BENCH_WHARF_LOG=${BENCH_WHARF_LOG:-warn}
BENCH_VERDACCIO_VERSION=${BENCH_VERDACCIO_VERSION:-6.8.0}
BENCH_ENCRYPTED=${BENCH_ENCRYPTED:-1}
BENCH_AUDIT=${BENCH_AUDIT:-1}
WHARF_BIN=${WHARF_BIN:-$ROOT/target/release/wharf-registry}

PKG=bench-pkg
PKG_DIST=bench_pkg
FIRST_VERSION=1.0.0
BIG_VERSION=2.0.0
ADMIN_TOKEN=bench-admin-$RANDOM$RANDOM$RANDOM
PEER_PASSWORD=bench-$RANDOM$RANDOM

ACCEPT_ABBREV='Accept: application/vnd.npm.install-v1+json'
# What is measured, in report order; from cargoindex on only Wharf serves,
# and tarballrange only Wharf (plain and encrypted) and nginx.
ENDPOINTS=${BENCH_ENDPOINTS:-"packument tarball tarballrange simple wheel cargoindex mavenpom goinfo nugetreg nupkg swiftreleases swiftzip"}
ACCEPT_HTML='Accept: text/html'
# A 64 KiB slice from inside the tarball, not at its start: an encrypting
# registry must start decrypting in the middle of the object.
RANGE_START=300000
RANGE_LEN=65536
RANGE_HDR="Range: bytes=$RANGE_START-$((RANGE_START + RANGE_LEN - 1))"

# fd 3 = the script's stderr, so messages (the cleanup's too, which may run
# while a redirected command is in flight) always reach the terminal
exec 3>&2
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die() { log "ERROR: $*"; exit 1; }

NOTES=()
note() { log "note: $*"; NOTES+=("$*"); }

# ------------------------------------------------------------ process control --
PIDS=()
declare -A PID_OF=()

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in ${TRY_PID:-} ${BG_PID:-}; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "PID $pid did not stop on TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  [ "${#PIDS[@]}" -gt 0 ] && log "stopped ${#PIDS[@]} server(s): ${PIDS[*]}"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server NAME LOGFILE CMD... : run CMD pinned to the server CPU, in the
# background; taskset and env exec, so $! is the server's own PID.
start_server() {
  local name=$1 logfile=$2
  shift 2
  taskset -c "$BENCH_SERVER_CPU" "$@" >"$logfile" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  PID_OF[$name]=$pid
  log "started $name (PID $pid), log $logfile"
}

# wait_http NAME URL [SECONDS]
wait_http() {
  local name=$1 url=$2 limit=${3:-60}
  for _ in $(seq 1 $((limit * 5))); do
    if ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
      log "$name exited early; last log lines:"; tail -n 30 "$RUN/$name.log" >&2 || true
      return 1
    fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)" = 200 ]; then
      return 0
    fi
    sleep 0.2
  done
  log "$name not ready at $url after ${limit}s; last log lines:"; tail -n 30 "$RUN/$name.log" >&2 || true
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# bg_wait CMD... : run a long client command (npm, twine, wrk) so that a signal
# is acted on at once; cleanup (or try's subshell) ends the command by its PID.
BG_PID=
bg_wait() {
  "$@" &
  BG_PID=$!
  local rc=0
  wait "$BG_PID" || rc=$?
  BG_PID=
  return "$rc"
}

# try FUNC ARGS... : run FUNC in a subshell with errexit in force; sets TRY_RC.
# The subshell runs in the background and is waited for, so that a signal to
# this script runs the cleanup at once (bash defers traps while a foreground
# child runs); cleanup also ends the subshell itself.
TRY_RC=0
TRY_PID=
try() {
  ( trap '[ -z "${BG_PID:-}" ] || kill -TERM "$BG_PID" 2>/dev/null; exit 143' TERM; set -e; "$@" ) &
  TRY_PID=$!
  TRY_RC=0
  wait "$TRY_PID" || TRY_RC=$?
  TRY_PID=
}

kib_field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib_of_kib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; }

META=$RUN/meta.tsv
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }

# ---------------------------------------------------------------- preflight --
[ "$BENCH_ONLY_PEERS" = 1 ] && [ "$BENCH_SKIP_PEERS" = 1 ] && die "BENCH_ONLY_PEERS=1 and BENCH_SKIP_PEERS=1 leave nothing to measure"
NCPU=$(nproc)
if [ "$NCPU" -lt 2 ]; then
  BENCH_SERVER_CPU=0 BENCH_LOAD_CPU=0
  echo "[bench] only one CPU: servers and wrk share CPU 0; ratios are still comparable, absolute numbers are not" >&2
fi
[ "$BENCH_SERVER_CPU" != "$BENCH_LOAD_CPU" ] || [ "$NCPU" -lt 2 ] || die "BENCH_SERVER_CPU and BENCH_LOAD_CPU must differ"
for tool in python3 curl taskset awk; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

mkdir -p "$OUT"
rm -rf "$RUN"
mkdir -p "$RUN" "$ART" "$RUN/wrk" "$RUN/bodies"
: >"$META"
RESULTS=$RUN/results.tsv
printf 'server\tendpoint\trps\tp99_ms\tnon2xx\tsocket_errors\tbody_bytes\n' >"$RESULTS"
T0=$(date +%s)

# ------------------------------------------------------------------- build --
if [ "$BENCH_ONLY_PEERS" != 1 ]; then
  if [ "$BENCH_SKIP_BUILD" != 1 ]; then
    log "cargo build --release -p wharf-registry"
    (cd "$ROOT" && cargo build --release -p wharf-registry)
  fi
  [ -x "$WHARF_BIN" ] || die "no Wharf binary at $WHARF_BIN (build it, or set WHARF_BIN, or BENCH_ONLY_PEERS=1)"
fi

# ----------------------------------------------------------- install peers --
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "$* missing and no apt-get to install it"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
NGINX_BIN=$(command -v nginx || true)
[ -n "$NGINX_BIN" ] || [ ! -x /usr/sbin/nginx ] || NGINX_BIN=/usr/sbin/nginx
if [ -z "$NGINX_BIN" ]; then apt_install nginx; NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx); fi
command -v wrk >/dev/null || apt_install wrk
command -v wrk >/dev/null || die "wrk not found after install"

VENV=$OUT/venv
NPM_PREFIX=$OUT/npm
NPM_CACHE=$OUT/npm-cache
command -v npm >/dev/null || die "npm not found (needed for npm publish)"
# twine is needed for every PyPI upload, Wharf's included
if [ ! -x "$VENV/bin/twine" ] || { [ "$BENCH_SKIP_PEERS" != 1 ] && [ ! -x "$VENV/bin/devpi-server" ]; }; then
  log "creating $VENV (twine, pypiserver[cache], devpi-server, devpi-client)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check twine 'pypiserver[cache]' passlib devpi-server devpi-client
fi
if [ "$BENCH_SKIP_PEERS" != 1 ] && [ ! -x "$NPM_PREFIX/node_modules/.bin/verdaccio" ]; then
  log "installing verdaccio@$BENCH_VERDACCIO_VERSION into $NPM_PREFIX"
  mkdir -p "$NPM_PREFIX"
  # verdaccio 6.8 with node-fetch pinned to 2.7.0 installs on Node 20 (6.10+ wants Node 22)
  cat >"$NPM_PREFIX/package.json" <<'EOF'
{"name": "wharf-bench-peers", "private": true, "version": "0.0.0", "overrides": {"node-fetch": "2.7.0"}}
EOF
  npm install --prefix "$NPM_PREFIX" --cache "$NPM_CACHE" --no-audit --no-fund --loglevel=error \
    "verdaccio@$BENCH_VERDACCIO_VERSION" >&2
fi

# -------------------------------------------------------------- artifacts --
log "generating artifacts ($BENCH_VERSIONS versions, $BENCH_ARTIFACT_BYTES-byte payloads) in $ART (cached)"
$GEN npm-tgz --out "$ART/npm-$BENCH_ARTIFACT_BYTES" --name "$PKG" --count "$BENCH_VERSIONS" --size "$BENCH_ARTIFACT_BYTES" >"$RUN/npm-files.txt"
$GEN wheels --out "$ART/pypi-$BENCH_ARTIFACT_BYTES" --name "$PKG" --count "$BENCH_VERSIONS" --size "$BENCH_ARTIFACT_BYTES" >"$RUN/wheel-files.txt"
mapfile -t NPM_FILES <"$RUN/npm-files.txt"
mapfile -t WHEEL_FILES <"$RUN/wheel-files.txt"
FIRST_TGZ=$ART/npm-$BENCH_ARTIFACT_BYTES/$PKG-$FIRST_VERSION.tgz
FIRST_WHL=$ART/pypi-$BENCH_ARTIFACT_BYTES/$PKG_DIST-$FIRST_VERSION-py3-none-any.whl

# ------------------------------------------------------------------- seeding --
# npm_publish_all REGISTRY_URL TOKEN NAME : real `npm publish` of every tarball
npm_publish_all() {
  local registry=$1 token=$2 name=$3 f
  local rc=$RUN/$name.npmrc authkey=${registry#http:}
  cat >"$rc" <<EOF
registry=$registry
$authkey:_authToken=$token
update-notifier=false
fund=false
audit=false
EOF
  log "$name: npm publish ${#NPM_FILES[@]} tarballs"
  for f in "${NPM_FILES[@]}"; do
    bg_wait timeout 120 npm publish "$f" --userconfig "$rc" --registry "$registry" --cache "$NPM_CACHE" \
      --loglevel=error >>"$RUN/$name.publish.log" 2>&1 \
      || { tail -n 20 "$RUN/$name.publish.log" >&2; return 1; }
  done
}

twine_upload() { # URL USER PASSWORD NAME FILES...
  local url=$1 user=$2 pass=$3 name=$4
  shift 4
  log "$name: twine upload $# file(s)"
  TWINE_NON_INTERACTIVE=1 bg_wait timeout 900 "$VENV/bin/twine" upload --non-interactive --disable-progress-bar \
    --repository-url "$url" -u "$user" -p "$pass" "$@" >>"$RUN/$name.upload.log" 2>&1 \
    || { tail -n 20 "$RUN/$name.upload.log" >&2; return 1; }
}

# fetch URL OUTFILE [HEADER] [STATUS] : GET, fail unless STATUS (200);
# prints "bytes content-type"
fetch() {
  local url=$1 outfile=$2 hdr=${3:-} want=${4:-200}
  local args=(-s --max-time 30 -o "$outfile" -w '%{http_code} %{size_download} %{content_type}')
  [ -n "$hdr" ] && args+=(-H "$hdr")
  local res
  res=$(curl "${args[@]}" "$url")
  [ "${res%% *}" = "$want" ] || { log "GET $url${hdr:+ ($hdr)} -> ${res%% *}, expected $want"; return 1; }
  echo "${res#* }"
}

# The request header wrk (and the body checks) send for an endpoint.
header_for() {
  case $1 in
    packument) echo "$ACCEPT_ABBREV" ;;
    simple) echo "$ACCEPT_HTML" ;;
    tarballrange) echo "$RANGE_HDR" ;;
    *) echo "" ;;
  esac
}

declare -A URL=() # URL[server:endpoint]

# Cargo (a 50-version index file), Maven (a released pom), Go (a module
# version), NuGet and Swift (50 versions each, a random payload of the
# artifact size in each package), served by Wharf alone: the other
# registries here speak npm/PyPI.
seed_other_formats() {
  local auth="Authorization: Bearer $WHARF_TOKEN" v body crates=$RUN/crates
  $GEN crate-publish --out "$crates" --name bench-crate --count "$BENCH_VERSIONS"
  for body in "$crates"/*.body; do
    curl -sf --max-time 30 -X PUT -H "$auth" --data-binary "@$body" \
      "$WHARF_URL/cargo/main/api/v1/crates/new" >/dev/null || die "cargo publish of $body to Wharf failed"
  done
  URL[wharf:cargoindex]=$WHARF_URL/cargo/main/index/be/nc/bench-crate
  local maven=$WHARF_URL/maven/main/com/acme/bench/bench-lib
  printf '<project><modelVersion>4.0.0</modelVersion><groupId>com.acme.bench</groupId><artifactId>bench-lib</artifactId><version>1.0.0</version><packaging>pom</packaging></project>\n' \
    >"$RUN/bench-lib-1.0.0.pom"
  curl -sf --max-time 30 -X PUT -H "$auth" --data-binary "@$RUN/bench-lib-1.0.0.pom" \
    "$maven/1.0.0/bench-lib-1.0.0.pom" >/dev/null || die "Maven pom PUT to Wharf failed"
  printf '<metadata><groupId>com.acme.bench</groupId><artifactId>bench-lib</artifactId><versioning><versions><version>1.0.0</version></versions></versioning></metadata>\n' \
    >"$RUN/maven-metadata.xml"
  curl -sf --max-time 30 -X PUT -H "$auth" --data-binary "@$RUN/maven-metadata.xml" \
    "$maven/maven-metadata.xml" >/dev/null || die "Maven metadata PUT to Wharf failed"
  URL[wharf:mavenpom]=$maven/1.0.0/bench-lib-1.0.0.pom
  $GEN go-zip --out "$RUN/bench.zip" --module example.internal/bench --version v1.0.0
  curl -sf --max-time 30 -X PUT -H "$auth" --data-binary "@$RUN/bench.zip" \
    "$WHARF_URL/go/main/example.internal/bench/@v/v1.0.0.zip" >/dev/null || die "Go module PUT to Wharf failed"
  URL[wharf:goinfo]=$WHARF_URL/go/main/example.internal/bench/@v/v1.0.0.info
  local nupkg zip
  $GEN nupkgs --out "$ART/nuget-$BENCH_ARTIFACT_BYTES" --name Bench.Pkg --count "$BENCH_VERSIONS" \
    --size "$BENCH_ARTIFACT_BYTES" >"$RUN/nupkgs.txt"
  while read -r nupkg; do
    curl -sf --max-time 30 -X PUT -H "X-NuGet-ApiKey: $WHARF_TOKEN" -F "package=@$nupkg" \
      "$WHARF_URL/nuget/main/v3/package/" >/dev/null || die "NuGet push of $nupkg to Wharf failed"
  done <"$RUN/nupkgs.txt"
  URL[wharf:nugetreg]=$WHARF_URL/nuget/main/v3/registration/bench.pkg/index.json
  URL[wharf:nupkg]=$WHARF_URL/nuget/main/v3/flatcontainer/bench.pkg/1.0.0/bench.pkg.1.0.0.nupkg
  $GEN swift-zips --out "$ART/swift-$BENCH_ARTIFACT_BYTES" --name bench.Pkg --count "$BENCH_VERSIONS" \
    --size "$BENCH_ARTIFACT_BYTES" >"$RUN/swift-zips.txt"
  while read -r zip; do
    curl -sf --max-time 30 -X PUT -H "$auth" -F "source-archive=@$zip;type=application/zip" \
      "$WHARF_URL/swift/main/bench/Pkg/$(basename "$zip" .zip)" >/dev/null || die "Swift publish of $zip to Wharf failed"
  done <"$RUN/swift-zips.txt"
  URL[wharf:swiftreleases]=$WHARF_URL/swift/main/bench/Pkg
  URL[wharf:swiftzip]=$WHARF_URL/swift/main/bench/Pkg/1.0.0.zip
}

# mint_token BASE_URL : a read+publish token for Repository `main`, minted with the admin token
mint_token() {
  local json
  json=$(curl -sf --max-time 10 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    -d '{"repositories":["main"],"permissions":["read","publish"],"ttlSeconds":3600}' "$1/api/v1/auth/token") || return 1
  printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

# ------------------------------------------------------------------- Wharf --
WHARF_ON=0
[ "$BENCH_ONLY_PEERS" != 1 ] && WHARF_ON=1
if [ "$WHARF_ON" = 1 ]; then
  WHARF_PORT=${WHARF_PORT:-$(free_port)}
  WHARF_URL=http://127.0.0.1:$WHARF_PORT
  mkdir -p "$RUN/wharf-data"
  start_server wharf "$RUN/wharf.log" env WHARF_ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG="$BENCH_WHARF_LOG" \
    "$WHARF_BIN" serve --listen "127.0.0.1:$WHARF_PORT" --data "$RUN/wharf-data"
  wait_http wharf "$WHARF_URL/readyz" 60 || die "Wharf did not become ready"
  sleep 1
  RSS_START=$(kib_field "${PID_OF[wharf]}" VmRSS)
  meta rss_start_mib "$(mib_of_kib "$RSS_START")"
  WHARF_TOKEN=$(mint_token "$WHARF_URL") || die "minting a Wharf token failed"
  npm_publish_all "$WHARF_URL/npm/main/" "$WHARF_TOKEN" wharf || die "npm publish to Wharf failed"
  twine_upload "$WHARF_URL/pypi/main/" __token__ "$WHARF_TOKEN" wharf "${WHEEL_FILES[@]}" || die "twine upload to Wharf failed"
  URL[wharf:packument]=$WHARF_URL/npm/main/$PKG
  URL[wharf:simple]=$WHARF_URL/pypi/main/simple/$PKG/
  seed_other_formats
fi

# --------------------------------------------------------- encrypted Wharf --
# The same binary and content as `wharf`, with encryption at rest, so the
# ratio between the two is what sealing and opening objects costs. npm and
# PyPI only: the artifact rows are where that cost shows.
ENC_ON=0
[ "$WHARF_ON" = 1 ] && [ "$BENCH_ENCRYPTED" = 1 ] && ENC_ON=1
if [ "$ENC_ON" = 1 ]; then
  WHARFENC_PORT=${WHARFENC_PORT:-$(free_port)}
  WHARFENC_URL=http://127.0.0.1:$WHARFENC_PORT
  ENC_SECRETS=$RUN/wharfenc-secrets
  mkdir -p "$RUN/wharfenc-data" "$ENC_SECRETS/bench-keys"
  # laid out like a Secret volume (DIR/{secret}/{key}): every entry but
  # `current` is a key, and `current` names the one that seals new data
  (
    umask 077
    printf 'k1\n' >"$ENC_SECRETS/bench-keys/current"
    python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' >"$ENC_SECRETS/bench-keys/k1"
  )
  # what the embedded default configuration is (Domain `default`, Repository
  # `main` readable anonymously, both in namespace `default`, which objects
  # without one get), plus the key Secret
  cat >"$RUN/wharfenc.yaml" <<EOF
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata:
  name: default
spec:
  storage:
    filesystem:
      path: "$RUN/wharfenc-data"
  encryption:
    keySecretRef:
      name: bench-keys
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata:
  name: main
spec:
  domainRef:
    name: default
  description: Default hosted repository
  access:
    read:
      - kind: Anonymous
EOF
  start_server wharfenc "$RUN/wharfenc.log" env WHARF_ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG="$BENCH_WHARF_LOG" \
    "$WHARF_BIN" serve --listen "127.0.0.1:$WHARFENC_PORT" --config "$RUN/wharfenc.yaml" --secrets-dir "$ENC_SECRETS"
  wait_http wharfenc "$WHARFENC_URL/readyz" 60 || die "encrypted Wharf did not become ready"
  WHARFENC_TOKEN=$(mint_token "$WHARFENC_URL") || die "minting an encrypted-Wharf token failed"
  npm_publish_all "$WHARFENC_URL/npm/main/" "$WHARFENC_TOKEN" wharfenc || die "npm publish to encrypted Wharf failed"
  twine_upload "$WHARFENC_URL/pypi/main/" __token__ "$WHARFENC_TOKEN" wharfenc "${WHEEL_FILES[@]}" \
    || die "twine upload to encrypted Wharf failed"
  # to find the tarball and wheel URLs as for `wharf`; dropped before the load
  URL[wharfenc:packument]=$WHARFENC_URL/npm/main/$PKG
  URL[wharfenc:simple]=$WHARFENC_URL/pypi/main/simple/$PKG/
fi

# ------------------------------------------------------ Wharf without audit --
# The same binary and npm content as `wharf`, recording no audit events
# (`--no-audit`), so the ratio between the two is what the audit trail costs on
# the hot path: every download an event, on the stream (the log file here, as
# kubelet collects standard output) and in the storage record.
NOAUDIT_ON=0
[ "$WHARF_ON" = 1 ] && [ "$BENCH_AUDIT" = 1 ] && NOAUDIT_ON=1
if [ "$NOAUDIT_ON" = 1 ]; then
  WHARFNOAUDIT_PORT=${WHARFNOAUDIT_PORT:-$(free_port)}
  WHARFNOAUDIT_URL=http://127.0.0.1:$WHARFNOAUDIT_PORT
  mkdir -p "$RUN/wharfnoaudit-data"
  start_server wharfnoaudit "$RUN/wharfnoaudit.log" env WHARF_ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG="$BENCH_WHARF_LOG" \
    "$WHARF_BIN" serve --listen "127.0.0.1:$WHARFNOAUDIT_PORT" --data "$RUN/wharfnoaudit-data" --no-audit
  wait_http wharfnoaudit "$WHARFNOAUDIT_URL/readyz" 60 || die "Wharf without audit did not become ready"
  WHARFNOAUDIT_TOKEN=$(mint_token "$WHARFNOAUDIT_URL") || die "minting a token of Wharf without audit failed"
  npm_publish_all "$WHARFNOAUDIT_URL/npm/main/" "$WHARFNOAUDIT_TOKEN" wharfnoaudit \
    || die "npm publish to Wharf without audit failed"
  URL[wharfnoaudit:packument]=$WHARFNOAUDIT_URL/npm/main/$PKG
fi

# -------------------------------------------------------------- Verdaccio --
PEERS_ON=0
[ "$BENCH_SKIP_PEERS" != 1 ] && PEERS_ON=1
ENABLED_PEERS=()
if [ "$PEERS_ON" = 1 ]; then
  VERDACCIO_PORT=${VERDACCIO_PORT:-$(free_port)}
  VERDACCIO_URL=http://127.0.0.1:$VERDACCIO_PORT
  mkdir -p "$RUN/verdaccio/storage"
  # no uplinks: Verdaccio never proxies anywhere; publish needs a (locally created) user
  cat >"$RUN/verdaccio/config.yaml" <<EOF
storage: $RUN/verdaccio/storage
auth:
  htpasswd:
    file: $RUN/verdaccio/htpasswd
    max_users: 10
uplinks: {}
packages:
  '**':
    access: \$all
    publish: \$authenticated
    unpublish: \$authenticated
max_body_size: $((BENCH_BIG_MIB * 2))mb
web:
  enable: false
server:
  keepAliveTimeout: 60
log: { type: stdout, format: pretty, level: warn }
EOF
  start_server verdaccio "$RUN/verdaccio.log" "$NPM_PREFIX/node_modules/.bin/verdaccio" \
    --config "$RUN/verdaccio/config.yaml" --listen "127.0.0.1:$VERDACCIO_PORT"
  seed_verdaccio() {
    wait_http verdaccio "$VERDACCIO_URL/-/ping" 60
    local tok
    tok=$(curl -sf --max-time 10 -X PUT -H 'content-type: application/json' \
      -d "{\"name\":\"bench\",\"password\":\"$PEER_PASSWORD\"}" \
      "$VERDACCIO_URL/-/user/org.couchdb.user:bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    npm_publish_all "$VERDACCIO_URL/" "$tok" verdaccio
  }
  try seed_verdaccio
  if [ "$TRY_RC" = 0 ]; then
    ENABLED_PEERS+=(verdaccio)
    URL[verdaccio:packument]=$VERDACCIO_URL/$PKG
  else
    note "Verdaccio setup/seeding failed (see $RUN/verdaccio.log, $RUN/verdaccio.publish.log); its rows are empty"
  fi

  # -------------------------------------------------------------- pypiserver --
  PYPISERVER_PORT=${PYPISERVER_PORT:-$(free_port)}
  PYPISERVER_URL=http://127.0.0.1:$PYPISERVER_PORT
  mkdir -p "$RUN/pypiserver/packages"
  # -a . -P . : no authentication (loopback only); watchdog (pypiserver[cache]) enables its digest cache
  start_server pypiserver "$RUN/pypiserver.log" "$VENV/bin/pypi-server" run \
    -i 127.0.0.1 -p "$PYPISERVER_PORT" -a . -P . --disable-fallback "$RUN/pypiserver/packages"
  seed_pypiserver() {
    wait_http pypiserver "$PYPISERVER_URL/health" 60
    twine_upload "$PYPISERVER_URL/" bench "$PEER_PASSWORD" pypiserver "${WHEEL_FILES[@]}"
  }
  try seed_pypiserver
  if [ "$TRY_RC" = 0 ]; then
    ENABLED_PEERS+=(pypiserver)
    URL[pypiserver:simple]=$PYPISERVER_URL/simple/$PKG/
  else
    note "pypiserver setup/seeding failed (see $RUN/pypiserver*.log); its rows are empty"
  fi

  # ------------------------------------------------------------------ devpi --
  DEVPI_PORT=${DEVPI_PORT:-$(free_port)}
  DEVPI_URL=http://127.0.0.1:$DEVPI_PORT
  mkdir -p "$RUN/devpi"
  # warnings only, like nginx with access_log off (devpi logs every request at INFO)
  cat >"$RUN/devpi/logging.json" <<'EOF'
{"version": 1, "disable_existing_loggers": false,
 "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
 "root": {"level": "WARNING", "handlers": ["stderr"]}}
EOF
  DEVPI_INIT_RC=0
  timeout 120 "$VENV/bin/devpi-init" --serverdir "$RUN/devpi/server" --no-root-pypi \
    --root-passwd "$PEER_PASSWORD" >"$RUN/devpi-init.log" 2>&1 || DEVPI_INIT_RC=$?
  if [ "$DEVPI_INIT_RC" = 0 ]; then
    start_server devpi "$RUN/devpi.log" "$VENV/bin/devpi-server" --serverdir "$RUN/devpi/server" \
      --host 127.0.0.1 --port "$DEVPI_PORT" --offline-mode --logger-cfg "$RUN/devpi/logging.json"
  fi
  seed_devpi() {
    [ "$DEVPI_INIT_RC" = 0 ]
    wait_http devpi "$DEVPI_URL/+api" 90
    local d=(bg_wait timeout 60 "$VENV/bin/devpi" --clientdir "$RUN/devpi/client")
    {
      "${d[@]}" use "$DEVPI_URL/"
      "${d[@]}" login root --password "$PEER_PASSWORD"
      "${d[@]}" index -c bench bases= volatile=True
    } >>"$RUN/devpi.client.log" 2>&1 || { tail -n 20 "$RUN/devpi.client.log" >&2; return 1; }
    twine_upload "$DEVPI_URL/root/bench/" root "$PEER_PASSWORD" devpi "${WHEEL_FILES[@]}"
  }
  try seed_devpi
  if [ "$TRY_RC" = 0 ]; then
    ENABLED_PEERS+=(devpi)
    URL[devpi:simple]=$DEVPI_URL/root/bench/+simple/$PKG/
  else
    note "devpi setup/seeding failed (see $RUN/devpi*.log); its rows are empty"
  fi
fi

# -------------------------------------------- resolve artifact URLs, verify --
SERVERS=()
[ "$WHARF_ON" = 1 ] && SERVERS+=(wharf)
[ "$ENC_ON" = 1 ] && SERVERS+=(wharfenc)
[ "$NOAUDIT_ON" = 1 ] && SERVERS+=(wharfnoaudit)
SERVERS+=("${ENABLED_PEERS[@]}")
declare -A SIZE=() CTYPE=()
for s in "${SERVERS[@]}"; do
  if [ -n "${URL[$s:packument]:-}" ]; then
    if r=$(fetch "${URL[$s:packument]}" "$RUN/bodies/$s.packument" "$ACCEPT_ABBREV"); then
      SIZE[$s:packument]=${r%% *}; CTYPE[$s:packument]=${r#* }
      if u=$($GEN tarball-url "$RUN/bodies/$s.packument" "$FIRST_VERSION" "${URL[$s:packument]}"); then
        URL[$s:tarball]=$u
      else
        note "$s: no dist.tarball for $FIRST_VERSION in its packument"
      fi
    else
      note "$s: packument GET failed"; unset "URL[$s:packument]"
    fi
  fi
  if [ -n "${URL[$s:simple]:-}" ]; then
    if r=$(fetch "${URL[$s:simple]}" "$RUN/bodies/$s.simple" "$ACCEPT_HTML"); then
      SIZE[$s:simple]=${r%% *}; CTYPE[$s:simple]=${r#* }
      n=$(grep -o "$PKG_DIST-[0-9.]*-py3-none-any.whl" "$RUN/bodies/$s.simple" | sort -u | wc -l || true)
      [ "$n" = "$BENCH_VERSIONS" ] || note "$s: simple page lists $n distinct wheels, expected $BENCH_VERSIONS"
      if u=$($GEN link-url "$RUN/bodies/$s.simple" "$(basename "$FIRST_WHL")" "${URL[$s:simple]}"); then
        URL[$s:wheel]=$u
      else
        note "$s: no link to $(basename "$FIRST_WHL") on its simple page"
      fi
    else
      note "$s: simple page GET failed"; unset "URL[$s:simple]"
    fi
  fi
  for ep in cargoindex mavenpom goinfo nugetreg nupkg swiftreleases swiftzip; do
    [ -n "${URL[$s:$ep]:-}" ] || continue
    if r=$(fetch "${URL[$s:$ep]}" "$RUN/bodies/$s.$ep"); then
      SIZE[$s:$ep]=${r%% *}; CTYPE[$s:$ep]=${r#* }
    else
      note "$s: $ep GET failed"; unset "URL[$s:$ep]"
    fi
  done
  for ep in tarball wheel; do
    [ -n "${URL[$s:$ep]:-}" ] || continue
    want=$FIRST_TGZ; [ $ep = wheel ] && want=$FIRST_WHL
    if r=$(fetch "${URL[$s:$ep]}" "$RUN/bodies/$s.$ep"); then
      SIZE[$s:$ep]=${r%% *}; CTYPE[$s:$ep]=${r#* }
      cmp -s "$RUN/bodies/$s.$ep" "$want" || note "$s: $ep body differs from the published file"
    else
      note "$s: $ep GET failed"; unset "URL[$s:$ep]"
    fi
  done
done
# The Range row: Wharf's two servers (nginx follows below); each answer must
# be exactly that slice of the published tarball.
TGZ_BYTES=$(stat -c %s "$FIRST_TGZ")
for s in wharf wharfenc; do
  [ -n "${URL[$s:tarball]:-}" ] || continue
  if [ "$TGZ_BYTES" -lt $((RANGE_START + RANGE_LEN)) ]; then
    note "the tarball ($TGZ_BYTES bytes) ends before the range ($RANGE_HDR): no tarballrange row; raise BENCH_ARTIFACT_BYTES"
    break
  fi
  URL[$s:tarballrange]=${URL[$s:tarball]}
  if r=$(fetch "${URL[$s:tarballrange]}" "$RUN/bodies/$s.tarballrange" "$RANGE_HDR" 206); then
    SIZE[$s:tarballrange]=${r%% *}; CTYPE[$s:tarballrange]=${r#* }
    if [ "${r%% *}" != "$RANGE_LEN" ]; then
      note "$s: tarballrange answered ${r%% *} bytes, expected $RANGE_LEN"; unset "URL[$s:tarballrange]"
    elif ! cmp -s -i "$RANGE_START:0" -n "$RANGE_LEN" "$FIRST_TGZ" "$RUN/bodies/$s.tarballrange"; then
      note "$s: tarballrange body differs from that slice of the published file"
    fi
  else
    note "$s: tarballrange GET failed"; unset "URL[$s:tarballrange]"
  fi
done
# The encrypted server's metadata only led to its artifact URLs: its rows are
# the artifacts, where encryption costs.
unset "URL[wharfenc:packument]" "URL[wharfenc:simple]"

# ------------------------------------------------------------------- nginx --
# nginx serves, as static files, the very bytes a registry returned: Wharf's,
# or (peers-only run) Verdaccio's packument and pypiserver's simple page.
NGINX_DIR=$RUN/nginx
mkdir -p "$NGINX_DIR/html" "$NGINX_DIR/tmp" "$NGINX_DIR/logs"
declare -A NGINX_FILE=([packument]=packument [tarball]=tarball.tgz [tarballrange]=tarball-range.tgz
  [simple]=simple.html [wheel]=wheel.whl
  [cargoindex]=bench-crate [mavenpom]=bench-lib-1.0.0.pom [goinfo]=v1.0.0.info
  [nugetreg]=nuget-registration.json [nupkg]=bench.pkg.1.0.0.nupkg [swiftreleases]=swift-releases.json
  [swiftzip]=swift-1.0.0.zip)
# nginx answers the Range row from the whole tarball, as a registry does,
# under its own name so that its location can differ (NGINX_EXTRA)
declare -A NGINX_BODY=([tarballrange]=tarball)
# On loopback (MSS about 64 KiB) a 64 KiB range plus its header is one full
# segment and a small tail; under tcp_nopush (TCP_CORK) nginx has Nagle back
# on, so the tail waits for the client's delayed ACK: 40 ms per response,
# 1.5k instead of 30k req/s. The other rows keep their config.
declare -A NGINX_EXTRA=([tarballrange]=" tcp_nopush off;")
declare -A NGINX_SRC=()
for ep in $ENDPOINTS; do
  body=${NGINX_BODY[$ep]:-$ep}
  for s in wharf verdaccio pypiserver devpi; do
    if [ -f "$RUN/bodies/$s.$body" ] && [ -n "${URL[$s:$ep]:-}" ]; then
      NGINX_SRC[$ep]=$s
      cp "$RUN/bodies/$s.$body" "$NGINX_DIR/html/${NGINX_FILE[$ep]}"
      break
    fi
  done
done
chmod -R a+rX "$NGINX_DIR/html"
NGINX_PORT=${NGINX_PORT:-$(free_port)}
NGINX_URL=http://127.0.0.1:$NGINX_PORT
{
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  client_body_temp_path $NGINX_DIR/tmp/body;
  proxy_temp_path $NGINX_DIR/tmp/proxy;
  fastcgi_temp_path $NGINX_DIR/tmp/fastcgi;
  uwsgi_temp_path $NGINX_DIR/tmp/uwsgi;
  scgi_temp_path $NGINX_DIR/tmp/scgi;
  types { }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $NGINX_DIR/html;
EOF
  for ep in $ENDPOINTS; do
    s=${NGINX_SRC[$ep]:-}
    [ -n "$s" ] || continue
    ct=${CTYPE[$s:${NGINX_BODY[$ep]:-$ep}]:-application/octet-stream}
    printf '    location = /%s { default_type "%s";%s }\n' "${NGINX_FILE[$ep]}" "$ct" "${NGINX_EXTRA[$ep]:-}"
  done
  echo "  }"
  echo "}"
} >"$NGINX_DIR/nginx.conf"
"$NGINX_BIN" -t -q -e "$NGINX_DIR/logs/error.log" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" \
  || die "nginx config test failed ($NGINX_DIR/nginx.conf)"
start_server nginx "$RUN/nginx.log" "$NGINX_BIN" -e "$NGINX_DIR/logs/error.log" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf"
for ep in $ENDPOINTS; do
  [ -n "${NGINX_SRC[$ep]:-}" ] && URL[nginx:$ep]=$NGINX_URL/${NGINX_FILE[$ep]}
done
first_nginx_ep=$(for ep in $ENDPOINTS; do [ -n "${URL[nginx:$ep]:-}" ] && echo "$ep" && break; done || true)
[ -n "$first_nginx_ep" ] || die "no bodies to serve with nginx: every registry failed"
wait_http nginx "${URL[nginx:$first_nginx_ep]}" 30 || die "nginx did not start"
for ep in $ENDPOINTS; do
  [ -n "${URL[nginx:$ep]:-}" ] || continue
  want=200; [ "$ep" = tarballrange ] && want=206
  r=$(fetch "${URL[nginx:$ep]}" "$RUN/bodies/nginx.$ep" "$(header_for "$ep")" "$want") \
    || die "nginx GET /${NGINX_FILE[$ep]} failed"
  SIZE[nginx:$ep]=${r%% *}
  cmp -s "$RUN/bodies/nginx.$ep" "$RUN/bodies/${NGINX_SRC[$ep]}.$ep" || die "nginx body for $ep differs from ${NGINX_SRC[$ep]}'s"
done

# ------------------------------------------------------------- idle memory --
if [ "$WHARF_ON" = 1 ]; then
  log "Wharf idle for ${BENCH_IDLE_WAIT}s before reading RSS$([ "$ENC_ON" = 1 ] && echo " (both servers)")"
  sleep "$BENCH_IDLE_WAIT"
  meta rss_idle_mib "$(mib_of_kib "$(kib_field "${PID_OF[wharf]}" VmRSS)")"
  [ "$ENC_ON" = 1 ] && meta rss_enc_idle_mib "$(mib_of_kib "$(kib_field "${PID_OF[wharfenc]}" VmRSS)")"
fi

# -------------------------------------------------------------------- load --
run_wrk() { # SERVER ENDPOINT
  local s=$1 ep=$2 url=${URL[$1:$2]:-} hdr args out
  [ -n "$url" ] || return 0
  hdr=$(header_for "$ep")
  # wrk's default 2 s timeout would drop every response of a slow peer (pypiserver)
  args=(-t1 "-c$BENCH_CONNECTIONS" --timeout "${BENCH_WRK_TIMEOUT}s")
  [ -n "$hdr" ] && args+=(-H "$hdr")
  out=$RUN/wrk/$s.$ep.txt
  if [ "$BENCH_WARMUP" -gt 0 ]; then
    bg_wait timeout $((BENCH_WARMUP + 30)) taskset -c "$BENCH_LOAD_CPU" wrk "${args[@]}" "-d${BENCH_WARMUP}s" "$url" \
      >"$RUN/wrk/$s.$ep.warmup.txt" 2>&1 || true
    # a slow server is still working off the warm-up's abandoned requests: one
    # request that completes means its queue has drained
    curl -s -o /dev/null --max-time 120 ${hdr:+-H "$hdr"} "$url" || true
  fi
  if ! bg_wait timeout $((BENCH_SECONDS + 30)) taskset -c "$BENCH_LOAD_CPU" wrk "${args[@]}" "-d${BENCH_SECONDS}s" \
      --latency "$url" >"$out" 2>&1; then
    note "wrk against $s $ep failed (see $out)"
  fi
  local parsed
  parsed=$($GEN parse-wrk "$out")
  printf '%s\t%s\t%s\t%s\n' "$s" "$ep" "$parsed" "${SIZE[$s:$ep]:-}" >>"$RESULTS"
  local rps p99 non2xx errs
  IFS=$'\t' read -r rps p99 non2xx errs <<<"$parsed"
  log "$(printf '%-10s %-12s req/s=%-9s p99_ms=%-7s bad=%s' "$s" "$ep" "$rps" "$p99" $((non2xx + errs)))"
}
# Anything else burning CPU (a build, say) skews every number: measure it with
# all servers idle, before and after the load phase, and say so in the report.
busy_pct() {
  local s1 s2
  s1=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 2
  s2=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
  awk -v a="$s1" -v b="$s2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]; i = y[2] - x[2];
    printf "%.0f", (t > 0 ? 100 * (t - i) / t : 0) }'
}
check_quiet() {
  local pct
  pct=$(busy_pct)
  meta "background_cpu_pct_$1" "$pct"
  if [ "$pct" -gt 10 ]; then
    local top="" pid cpu cmd mine p
    if command -v top >/dev/null; then
      while read -r pid cpu cmd; do
        mine=""
        for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] && mine=", started by this script"; done
        top+="${top:+, }$cmd (PID $pid$mine) $cpu%"
      done < <(top -b -n 2 -d 1 -w 200 2>/dev/null | awk '/^top -/ { n++ }
        n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 5 { print $1, $9, $12 }' | head -n 4 || true)
    fi
    note "machine not quiet $1 the load phase: ${pct}% of all CPU busy while the servers idled${top:+ (busiest: $top)}; treat the numbers with care"
  fi
}
check_quiet before
log "load: wrk -t1 -c$BENCH_CONNECTIONS -d${BENCH_SECONDS}s (+${BENCH_WARMUP}s warm-up) on CPU $BENCH_LOAD_CPU, servers on CPU $BENCH_SERVER_CPU"
# Rounds interleave nginx and Wharf (plain and encrypted), and the report
# takes each one's median, so a burst of other work on the machine cannot
# decide a ratio alone. The peers, far slower, run in the first round only.
WHARFS=wharf
[ "$ENC_ON" = 1 ] && WHARFS="wharf wharfenc"
[ "$NOAUDIT_ON" = 1 ] && WHARFS="$WHARFS wharfnoaudit"
for round in $(seq 1 "$BENCH_ROUNDS"); do
  log "round $round of $BENCH_ROUNDS"
  servers="nginx $WHARFS"
  [ "$round" = 1 ] && servers="nginx $WHARFS verdaccio pypiserver devpi"
  for ep in $ENDPOINTS; do
    for s in $servers; do
      run_wrk "$s" "$ep"
    done
  done
done

check_quiet after

# --------------------------------------------------------- publish 200 MiB --
# Peak RSS rise: reset VmHWM (clear_refs 5), read it, publish, read it again.
if [ "$WHARF_ON" = 1 ]; then
  meta rss_after_load_mib "$(mib_of_kib "$(kib_field "${PID_OF[wharf]}" VmRSS)")"
  [ "$ENC_ON" = 1 ] && meta rss_enc_after_load_mib "$(mib_of_kib "$(kib_field "${PID_OF[wharfenc]}" VmRSS)")"
  BIG_BYTES=$((BENCH_BIG_MIB * 1024 * 1024))
  # measure_publish PID PREFIX KEY COMMAND... : meta keys PREFIX_KEY_*
  measure_publish() {
    local pid=$1 prefix=$2 key=$3 before after
    shift 3
    if ! { echo 5 >"/proc/$pid/clear_refs"; } 2>/dev/null; then
      note "could not reset VmHWM (/proc/$pid/clear_refs); the ${prefix}_$key rise is measured from the earlier peak"
    fi
    before=$(kib_field "$pid" VmHWM)
    if "$@"; then meta "${prefix}_${key}_status" ok; else meta "${prefix}_${key}_status" "FAIL: publish failed"; fi
    kill -0 "$pid" 2>/dev/null || { meta "${prefix}_${key}_status" "FAIL: Wharf (PID $pid) died"; return 0; }
    after=$(kib_field "$pid" VmHWM)
    meta "${prefix}_${key}_hwm_before_mib" "$(mib_of_kib "$before")"
    meta "${prefix}_${key}_hwm_after_mib" "$(mib_of_kib "$after")"
    meta "${prefix}_${key}_rise_mib" "$(mib_of_kib $((after - before)))"
    log "${prefix} $key ${BENCH_BIG_MIB} MiB: VmHWM $(mib_of_kib "$before") -> $(mib_of_kib "$after") MiB"
  }
  log "generating ${BENCH_BIG_MIB} MiB wheel"
  BIG_WHL=$($GEN wheels --out "$ART/big-$BIG_BYTES" --name "$PKG" --versions "$BIG_VERSION" --size "$BIG_BYTES")
  publish_big_wheel() { twine_upload "$1/pypi/main/" __token__ "$2" "$3-big" "$BIG_WHL"; } # URL TOKEN NAME
  measure_publish "${PID_OF[wharf]}" publish pypi publish_big_wheel "$WHARF_URL" "$WHARF_TOKEN" wharf
  if [ "$ENC_ON" = 1 ]; then
    measure_publish "${PID_OF[wharfenc]}" publish_enc pypi publish_big_wheel "$WHARFENC_URL" "$WHARFENC_TOKEN" wharfenc
  fi
  if [ "$BENCH_NPM_BIG" = 1 ]; then
    log "generating ${BENCH_BIG_MIB} MiB npm tarball"
    BIG_TGZ=$($GEN npm-tgz --out "$ART/big-$BIG_BYTES" --name "$PKG" --versions "$BIG_VERSION" --size "$BIG_BYTES")
    publish_big_tgz() { # URL TOKEN NAME
      local saved=("${NPM_FILES[@]}")
      NPM_FILES=("$BIG_TGZ")
      local rc=0
      npm_publish_all "$1/npm/main/" "$2" "$3-big" || rc=$?
      NPM_FILES=("${saved[@]}")
      return $rc
    }
    measure_publish "${PID_OF[wharf]}" publish npm publish_big_tgz "$WHARF_URL" "$WHARF_TOKEN" wharf
    if [ "$ENC_ON" = 1 ]; then
      measure_publish "${PID_OF[wharfenc]}" publish_enc npm publish_big_tgz "$WHARFENC_URL" "$WHARFENC_TOKEN" wharfenc
    fi
  else
    meta publish_npm_status skipped
    [ "$ENC_ON" = 1 ] && meta publish_enc_npm_status skipped
  fi
fi

# ------------------------------------------------------------------ report --
meta date "$(date '+%Y-%m-%d %H:%M:%S %Z')"
meta seconds "$BENCH_SECONDS"
meta rounds "$BENCH_ROUNDS"
meta connections "$BENCH_CONNECTIONS"
meta versions "$BENCH_VERSIONS"
meta big_mib "$BENCH_BIG_MIB"
meta artifact_bytes "$BENCH_ARTIFACT_BYTES"
meta server_cpu "$BENCH_SERVER_CPU"
meta load_cpu "$BENCH_LOAD_CPU"
meta wharf "$([ "$WHARF_ON" = 1 ] && echo yes || echo no)"
meta encrypted "$([ "$ENC_ON" = 1 ] && echo yes || echo no)"
meta audit_compared "$([ "$NOAUDIT_ON" = 1 ] && echo yes || echo no)"
meta range "$RANGE_HDR"
for ep in $ENDPOINTS; do
  [ -n "${NGINX_SRC[$ep]:-}" ] && [ "${NGINX_SRC[$ep]}" != wharf ] && [ "$WHARF_ON" = 1 ] \
    && note "nginx serves ${NGINX_SRC[$ep]}'s $ep body (Wharf's was not available)"
done
NOTES+=("wrk, not the servers, may be the ceiling for the 1 MiB rows: it runs on one core and reads every byte")
meta notes "$(IFS='|'; echo "${NOTES[*]}" | sed 's/|/ | /g')"
$GEN report "$RESULTS" "$META" "$OUT/results.md"
cp "$OUT/results.md" "$RUN/results.md"
log "done in $(( $(date +%s) - T0 ))s; results in $OUT/results.md, raw wrk output in $RUN/wrk/"
