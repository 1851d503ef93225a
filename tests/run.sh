#!/usr/bin/env bash
# The whole test suite: installs the package clients the end-to-end tests
# drive (tests/install-clients.sh), builds the kube-apiserver and etcd the
# operator tests run against (tests/control-plane.sh; cached by version) and the
# helm the chart tests run (tests/helm.sh; cached by version), Argo CD's Lua
# sandbox for the health check tests (tests/argocd-lua.sh) and the OpenID
# provider the OIDC tests run (tests/oidc-provider.sh: Ory Hydra, cached by
# version), the S3 server the storage tests run (tests/seaweedfs.sh:
# SeaweedFS) and kube-score (tests/kube-score.sh), both cached by version, gathers the
# Gateway API, cert-manager and Prometheus Operator CRDs from their Go modules
# (tests/third-party-crds.sh) and builds promtool (tests/promtool.sh; cached by version),
# builds the `wharf` CLI the login tests drive (cargo builds a
# binary for the tests of its own package only), then runs every test of the
# workspace.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-clients.sh
WHARF_CONTROL_PLANE_BIN="$(tests/control-plane.sh | tail -n 1)"
export WHARF_CONTROL_PLANE_BIN
WHARF_HELM_BIN="$(tests/helm.sh | tail -n 1)"
export WHARF_HELM_BIN
WHARF_ARGOCD_LUA_BIN="$(tests/argocd-lua.sh | tail -n 1)"
export WHARF_ARGOCD_LUA_BIN
WHARF_HYDRA_BIN="$(tests/oidc-provider.sh | tail -n 1)"
export WHARF_HYDRA_BIN
WHARF_SEAWEEDFS_BIN="$(tests/seaweedfs.sh | tail -n 1)"
export WHARF_SEAWEEDFS_BIN
WHARF_KUBE_SCORE_BIN="$(tests/kube-score.sh | tail -n 1)"
export WHARF_KUBE_SCORE_BIN
WHARF_THIRD_PARTY_CRDS="$(tests/third-party-crds.sh | tail -n 1)"
export WHARF_THIRD_PARTY_CRDS
WHARF_PROMTOOL_BIN="$(tests/promtool.sh | tail -n 1)"
export WHARF_PROMTOOL_BIN
cargo build -p wharf-cli --locked
cargo test --workspace --locked "$@"
