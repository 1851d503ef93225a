#!/usr/bin/env bash
# Install times through Wharf's external connections against installing
# directly from the public registries (and, for npm, through Verdaccio as a
# caching proxy), per format, in one run: direct, cold proxy, warm proxy
# (the proxy holds everything, the client starts empty), direct again.
# Needs the internet. Registry URLs are read at run time from the clients'
# own defaults; no public host is written anywhere in this repository.
# Every client starts with an empty cache and HOME. Prints a Markdown table
# (also written to bench/out/upstreams/results.md). Run it niced:
#   nice -n 19 bench/upstreams.sh
# Servers it starts are ended by PID on exit. See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT=$BENCH_DIR/out
RUN=$OUT/upstreams          # per-run state, wiped at start
NPM_PREFIX=$OUT/npm         # Verdaccio, shared with bench/run.sh
NPM_CACHE=$OUT/npm-cache
BENCH_VERDACCIO_VERSION=${BENCH_VERDACCIO_VERSION:-6.8.0}
BENCH_FORMATS=${BENCH_FORMATS:-"npm pypi go cargo"}
if [ -z "${WHARF_BIN:-}" ]; then
  WHARF_BIN=$ROOT/target/release/wharf-registry
  [ -x "$WHARF_BIN" ] || WHARF_BIN=$ROOT/target/debug/wharf-registry
fi
[ -x "$WHARF_BIN" ] || { echo "no wharf-registry binary: build it first (cargo build -p wharf-registry)" >&2; exit 1; }
export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}

# What each format installs: an npm web framework, a PyPI HTTP library, a
# Go module with dependencies, a crate tree (anyhow, serde with derive).
NPM_PACKAGE=express@4
PYPI_PACKAGE=requests
GO_MODULE=github.com/spf13/cobra
GO_VERSION=v1.8.1

log() { printf '[upstreams %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {
  local url=$1
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)" = 200 ] && return 0
    sleep 0.2
  done
  die "$url not ready after 60 s"
}

rm -rf "$RUN"
mkdir -p "$RUN"

# -------------------------------------------------- registry URLs, from the clients --
clean_env() {
  env -u npm_config_registry -u PIP_INDEX_URL -u GOPROXY -u GOFLAGS HOME="$RUN/probe-home" "$@"
}
mkdir -p "$RUN/probe-home"
NPM_URL=$(clean_env npm config get registry | head -n 1)
NPM_URL=${NPM_URL%/}
PYPI_URL=$(clean_env python3 -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')
PYPI_URL=${PYPI_URL%/}
GO_URL=$(clean_env GOENV=off go env GOPROXY)
GO_URL=${GO_URL%%[,|]*}
GO_URL=${GO_URL%/}
# cargo has no stable command printing its default index: its error when
# the proxy is a closed port names it (no request leaves the machine).
mkdir -p "$RUN/probe/src" "$RUN/probe-home/.cargo"
# (`[workspace]`: not part of the repository's own workspace around bench/out)
printf '[package]\nname = "probe"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n\n[dependencies]\nanyhow = "1"\n' >"$RUN/probe/Cargo.toml"
echo 'fn main() {}' >"$RUN/probe/src/main.rs"
printf '[net]\nretry = 0\n' >"$RUN/probe-home/.cargo/config.toml"
CARGO_URL=$( (cd "$RUN/probe" && clean_env CARGO_HOME="$RUN/probe-home/.cargo" https_proxy=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
  cargo generate-lockfile 2>&1 || true) | grep -o 'https://[^[:space:]`'"'"'"]*/config\.json' | head -n 1 || true)
CARGO_URL=${CARGO_URL%/config.json}
for pair in "npm:$NPM_URL" "pypi:$PYPI_URL" "go:$GO_URL" "cargo:$CARGO_URL"; do
  case "${pair#*:}" in
    http://*|https://*) ;;
    *) die "${pair%%:*}: the local client names no usable registry URL (${pair#*:})" ;;
  esac
done
log "registry URLs read from the clients (npm, pip, go, cargo)"

# ------------------------------------------------------------------- Wharf --
WHARF_PORT=$(free_port)
WHARF=http://127.0.0.1:$WHARF_PORT
cat >"$RUN/wharf.yaml" <<EOF
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: bench}
spec:
  storage: {filesystem: {path: "$RUN/wharf-data"}}
  externalConnections:
    - {name: public-npm, format: npm, url: "$NPM_URL"}
    - {name: public-pypi, format: pypi, url: "$PYPI_URL"}
    - {name: public-crates, format: cargo, url: "$CARGO_URL"}
    - {name: public-go, format: go, url: "$GO_URL"}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: app}
spec:
  domainRef: {name: bench}
  upstreams: [{name: npm-store}, {name: pypi-store}, {name: cargo-store}, {name: go-store}]
  access: {read: [{kind: Anonymous}]}
EOF
for store in npm pypi cargo go; do
  connection=$store
  [ "$store" = cargo ] && connection=crates
  cat >>"$RUN/wharf.yaml" <<EOF
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: $store-store}
spec:
  domainRef: {name: bench}
  externalConnection: public-$connection
  # A public cache: app's anonymous readers may read it (the upstream consent rule).
  access: {read: [{kind: Anonymous}]}
EOF
done
WHARF_ADMIN_TOKEN=bench-$RANDOM$RANDOM RUST_LOG=${BENCH_WHARF_LOG:-info} "$WHARF_BIN" serve --config "$RUN/wharf.yaml" \
  --listen "127.0.0.1:$WHARF_PORT" >"$RUN/wharf.log" 2>&1 &
PIDS+=("$!")
wait_http "$WHARF/readyz"
log "Wharf ($WHARF_BIN) on $WHARF"

upstream_requests() {
  curl -s "$WHARF/metrics" | awk '/^wharf_upstream_requests_total\{/ { n += $NF } END { print n + 0 }'
}

# --------------------------------------------------------------- Verdaccio --
VERDACCIO=
case " $BENCH_FORMATS " in *" npm "*)
  if [ ! -x "$NPM_PREFIX/node_modules/.bin/verdaccio" ]; then
    log "installing verdaccio@$BENCH_VERDACCIO_VERSION into $NPM_PREFIX"
    mkdir -p "$NPM_PREFIX"
    # verdaccio 6.8 with node-fetch pinned to 2.7.0 installs on Node 20 (6.10+ wants Node 22)
    cat >"$NPM_PREFIX/package.json" <<'EOF'
{"name": "wharf-bench-peers", "private": true, "version": "0.0.0", "overrides": {"node-fetch": "2.7.0"}}
EOF
    npm install --prefix "$NPM_PREFIX" --cache "$NPM_CACHE" --no-audit --no-fund --loglevel=error \
      "verdaccio@$BENCH_VERDACCIO_VERSION" >&2
  fi
  VERDACCIO_PORT=$(free_port)
  VERDACCIO=http://127.0.0.1:$VERDACCIO_PORT
  mkdir -p "$RUN/verdaccio/storage"
  cat >"$RUN/verdaccio/config.yaml" <<EOF
storage: $RUN/verdaccio/storage
uplinks:
  public: {url: "$NPM_URL/", cache: true}
packages:
  '**': {access: \$all, proxy: public}
web: {enable: false}
log: {type: stdout, format: pretty, level: warn}
EOF
  "$NPM_PREFIX/node_modules/.bin/verdaccio" --config "$RUN/verdaccio/config.yaml" \
    --listen "127.0.0.1:$VERDACCIO_PORT" >"$RUN/verdaccio.log" 2>&1 &
  PIDS+=("$!")
  wait_http "$VERDACCIO/-/ping"
  log "Verdaccio $BENCH_VERDACCIO_VERSION on $VERDACCIO, uplink: the npm client's registry"
;; esac

# ------------------------------------------------------------ the installs --
# install FORMAT REGISTRY-URL: one install with an empty client cache, in a
# fresh folder; prints the wall time in seconds. Preparation (virtualenv,
# project files) is outside the timed part.
N=0
install() {
  local format=$1 url=$2
  N=$((N + 1))
  local dir=$RUN/install-$N home=$RUN/install-$N/home
  mkdir -p "$dir/project" "$home"
  local -a envs=(HOME="$home" XDG_CACHE_HOME="$home/.cache" XDG_CONFIG_HOME="$home/.config")
  local -a cmd
  case $format in
    npm)
      echo '{"name":"project","version":"1.0.0","private":true}' >"$dir/project/package.json"
      printf 'registry=%s/\n' "$url" >"$dir/project/.npmrc"
      envs+=(npm_config_cache="$home/.npm" npm_config_userconfig="$home/.npmrc" npm_config_update_notifier=false)
      cmd=(npm install --no-audit --no-fund --loglevel=error "$NPM_PACKAGE")
      ;;
    pypi)
      python3 -m venv "$dir/venv"
      envs+=(PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1)
      cmd=("$dir/venv/bin/pip" install -q --no-cache-dir --index-url "$url/" "$PYPI_PACKAGE")
      ;;
    go)
      printf 'module example.internal/app\n\ngo 1.21\n' >"$dir/project/go.mod"
      printf 'package main\n\nimport "%s"\n\nfunc main() { _ = cobra.Command{} }\n' "$GO_MODULE" >"$dir/project/main.go"
      envs+=(GOENV=off GOFLAGS=-modcacherw GOPATH="$dir/gopath" GOMODCACHE="$dir/gomodcache" GOCACHE="$dir/gocache"
        GOPROXY="$url" GOSUMDB=off GOTOOLCHAIN=local)
      cmd=(go get "$GO_MODULE@$GO_VERSION")
      ;;
    cargo)
      mkdir -p "$dir/project/src" "$home/.cargo"
      printf '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n\n[dependencies]\nanyhow = "1"\nserde = { version = "1", features = ["derive"] }\n' >"$dir/project/Cargo.toml"
      echo 'fn main() {}' >"$dir/project/src/main.rs"
      if [ "$url" != direct ]; then
        printf '[source.crates-io]\nreplace-with = "wharf"\n\n[source.wharf]\nregistry = "sparse+%s/"\n' "$url" >"$home/.cargo/config.toml"
      fi
      envs+=(CARGO_HOME="$home/.cargo")
      cmd=(cargo fetch --quiet)
      ;;
  esac
  local start end
  start=$(date +%s.%N)
  (cd "$dir/project" && env "${envs[@]}" "${cmd[@]}") >"$dir/log" 2>&1 || { cat "$dir/log" >&2; die "$format install from $url failed"; }
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.2f}')"
}

# Each row: direct, Wharf cold, Verdaccio cold, Wharf warm (upstream
# requests counted), Verdaccio warm, direct again.
declare -A T
for format in $BENCH_FORMATS; do
  case $format in
    npm) direct=$NPM_URL; wharf=$WHARF/npm/app ;;
    pypi) direct=$PYPI_URL; wharf=$WHARF/pypi/app/simple ;;
    go) direct=$GO_URL; wharf=$WHARF/go/app ;;
    cargo) direct=direct; wharf=$WHARF/cargo/app/index ;;
    *) die "unknown format $format" ;;
  esac
  log "$format: direct"
  T[$format:direct1]=$(install "$format" "$direct")
  log "$format: Wharf cold"
  T[$format:wharf-cold]=$(install "$format" "$wharf")
  if [ "$format" = npm ] && [ -n "$VERDACCIO" ]; then
    log "$format: Verdaccio cold"
    T[$format:verdaccio-cold]=$(install "$format" "$VERDACCIO")
  fi
  before=$(upstream_requests)
  curl -s "$WHARF/metrics" | grep '^wharf_upstream_requests_total' >"$RUN/$format-before-warm.metrics" || true
  log "$format: Wharf warm"
  T[$format:wharf-warm]=$(install "$format" "$wharf")
  T[$format:warm-requests]=$(( $(upstream_requests) - before ))
  # Which requests a warm install made, if any (compare with the file above).
  curl -s "$WHARF/metrics" | grep '^wharf_upstream_requests_total' >"$RUN/$format-after-warm.metrics" || true
  if [ "$format" = npm ] && [ -n "$VERDACCIO" ]; then
    log "$format: Verdaccio warm"
    T[$format:verdaccio-warm]=$(install "$format" "$VERDACCIO")
  fi
  log "$format: direct again"
  T[$format:direct2]=$(install "$format" "$direct")
done

# ------------------------------------------------------------------ report --
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
verdict() { python3 -c "print('PASS' if $1 <= $2 else 'FAIL')"; }
{
  echo "| format (install) | direct s | Wharf cold s | cold ratio | Wharf warm s | warm ratio | warm upstream requests | Verdaccio cold s (ratio) | Verdaccio warm s (ratio) |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for format in $BENCH_FORMATS; do
    case $format in
      npm) what="npm install $NPM_PACKAGE" ;;
      pypi) what="pip install $PYPI_PACKAGE" ;;
      go) what="go get cobra@$GO_VERSION" ;;
      cargo) what="cargo fetch anyhow+serde(derive)" ;;
    esac
    d1=${T[$format:direct1]} d2=${T[$format:direct2]}
    direct=$(python3 -c "print(f'{($d1 + $d2) / 2:.2f}')")
    cold=${T[$format:wharf-cold]} warm=${T[$format:wharf-warm]} requests=${T[$format:warm-requests]}
    cold_ratio=$(ratio "$cold" "$direct") warm_ratio=$(ratio "$warm" "$direct")
    vcold=- vwarm=-
    if [ -n "${T[$format:verdaccio-cold]:-}" ]; then
      vcold="${T[$format:verdaccio-cold]} ($(ratio "${T[$format:verdaccio-cold]}" "$direct"))"
      vwarm="${T[$format:verdaccio-warm]} ($(ratio "${T[$format:verdaccio-warm]}" "$direct"))"
    fi
    request_verdict=PASS
    [ "$requests" = 0 ] || request_verdict=FAIL
    echo "| $what | $direct ($d1, $d2) | $cold | $cold_ratio $(verdict "$cold_ratio" 1.05) | $warm | $warm_ratio $(verdict "$warm_ratio" 0.45) | $requests $request_verdict | $vcold | $vwarm |"
  done
  echo
  echo "Targets: cold ≤ 1.05× direct, warm ≤ 0.45× direct, 0 upstream requests when warm. Direct is the mean of the runs before and after the proxies; every install starts with an empty client cache. Wharf: $(basename "$(dirname "$WHARF_BIN")") build."
} | tee "$RUN/results.md"
