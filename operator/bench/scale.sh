#!/usr/bin/env bash
# Measures the operator on a real kube-apiserver + etcd (loopback only): N Repositories in
# one Domain (default 200) from `kubectl apply` to all Ready, the operator's peak RSS
# (VmHWM), and the API writes to the objects it manages during 30 s of steady state.
#
#   operator/bench/scale.sh [N]
#
# Needs kubectl, openssl, python3 and the control-plane binaries that tests/control-plane.sh
# builds (WHARF_CONTROL_PLANE_BIN, or the newest ~/.cache/wharf/control-plane/*/). The
# operator runs under exactly operator/rbac/cluster-role.yaml, as ServiceAccount
# wharf-system/wharf-operator. WHARF_SCALE_TIMEOUT (seconds, default 600) bounds the wait
# for Ready. The harness has no kubelet: the script marks the registry
# Deployment available, as the test harness's Kubelet helper does.
set -euo pipefail
count=${1:-200}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${WHARF_CONTROL_PLANE_BIN:-$(ls -d "$HOME"/.cache/wharf/control-plane/*/ 2>/dev/null | sort | tail -1)}
[ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] || { echo "no control-plane binaries; run tests/control-plane.sh" >&2; exit 1; }
operator=${WHARF_OPERATOR_BIN:-$root/target/release/wharf-operator}
if [ -z "${WHARF_OPERATOR_BIN:-}" ]; then
  (cd "$root" && nice -n 10 cargo build --release -q -p wharf-operator)
fi

dir=$(mktemp -d -t wharf-scale-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT

read -r etcd_port peer_port api_port < <(python3 -c '
import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
token=$(openssl rand -hex 16)
echo "$token,admin,admin,\"system:masters\"" > "$dir/tokens.csv"
openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
openssl rsa -pubout -in "$dir/sa.key" -out "$dir/sa.pub" 2>/dev/null
"$bin/etcd" --name scale --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "scale=http://127.0.0.1:$peer_port" \
  --unsafe-no-fsync --log-level warn >"$dir/etcd.log" 2>&1 &
pids+=($!)
"$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 --secure-port "$api_port" --endpoint-reconciler-type none \
  --cert-dir "$dir/certs" --authorization-mode RBAC --anonymous-auth=false --token-auth-file "$dir/tokens.csv" \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$dir/sa.pub" \
  --service-account-signing-key-file "$dir/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
  --disable-admission-plugins ServiceAccount >"$dir/apiserver.log" 2>&1 &
pids+=($!)

kubeconfig() { # user-token -> kubeconfig text
  printf 'apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: "https://127.0.0.1:%s", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: "%s"}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n' "$api_port" "$1"
}
kubeconfig "$token" > "$dir/admin.kubeconfig"
export KUBECONFIG=$dir/admin.kubeconfig
for _ in $(seq 120); do kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 0.5; done

kubectl apply --server-side -f "$root/crds/" >/dev/null
kubectl create namespace wharf-system >/dev/null
kubectl apply --server-side -f "$root/operator/rbac/" >/dev/null
kubeconfig "$(kubectl -n wharf-system create token wharf-operator --duration 1h)" > "$dir/operator.kubeconfig"
KUBECONFIG=$dir/operator.kubeconfig RUST_LOG=warn "$operator" run >"$dir/operator.log" 2>&1 &
operator_pid=$!
pids+=("$operator_pid")

kubectl create namespace scale >/dev/null
python3 - "$count" > "$dir/scale.yaml" <<'PY'
import sys
count = int(sys.argv[1])
print("apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {name: scale, namespace: scale}\nspec:\n  storage: {memory: {}}")
for i in range(count):
    # Chains of ten: each Repository reads through the previous one.
    upstream = f"\n  upstreams: [{{name: repo-{i-1:04d}}}]" if i % 10 else ""
    print(f"---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: repo-{i:04d}, namespace: scale}}\nspec:\n  domainRef: {{name: scale}}{upstream}")
PY

ready_count() {
  kubectl -n scale get repositories -o json | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
print(sum(1 for o in items if any(c["type"] == "Ready" and c["status"] == "True" for c in o.get("status", {}).get("conditions", []))))'
}
start=$(date +%s.%N)
kubectl apply --server-side -f "$dir/scale.yaml" >/dev/null
applied=$(date +%s.%N)
kubelet_done=
while true; do
  if [ -z "$kubelet_done" ]; then
    generation=$(kubectl -n scale get deployment wharf-scale -o jsonpath='{.metadata.generation}' 2>/dev/null || true)
    if [ -n "$generation" ]; then
      kubectl -n scale patch deployment wharf-scale --subresource=status --type=merge \
        -p "{\"status\":{\"observedGeneration\":$generation,\"replicas\":1,\"readyReplicas\":1,\"availableReplicas\":1}}" >/dev/null
      kubelet_done=1
    fi
  fi
  [ "$(ready_count)" -ge "$count" ] && break
  if (( $(python3 -c "import time; print(int(time.time() - $start))") > ${WHARF_SCALE_TIMEOUT:-600} )); then
    echo "timed out: $(ready_count) of $count Ready; the operator said:" >&2
    grep -v 'cert bypassed' "$dir/operator.log" | tail -20 >&2
    exit 1
  fi
  sleep 0.5
done
ready=$(date +%s.%N)

# Steady state: every change to the kinds the operator writes, for 30 s.
sleep 5
revision=$(kubectl get --raw '/api/v1/namespaces?limit=1' | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
watch_pids=()
for path in /apis/wharf.dev/v1alpha1/domains /apis/wharf.dev/v1alpha1/repositories /apis/wharf.dev/v1alpha1/upstreampolicies \
  /api/v1/configmaps /api/v1/secrets /api/v1/serviceaccounts /api/v1/services /api/v1/persistentvolumeclaims \
  /apis/apps/v1/deployments /apis/policy/v1/poddisruptionbudgets /apis/rbac.authorization.k8s.io/v1/roles \
  /apis/rbac.authorization.k8s.io/v1/rolebindings /apis/rbac.authorization.k8s.io/v1/clusterrolebindings \
  /apis/events.k8s.io/v1/events; do
  timeout 30 kubectl get --raw "$path?watch=1&resourceVersion=$revision" >>"$dir/steady.jsonl" 2>/dev/null &
  watch_pids+=($!)
done
wait "${watch_pids[@]}" 2>/dev/null || true
writes=$(grep -c . "$dir/steady.jsonl" || true)

python3 - "$start" "$applied" "$ready" "$count" <<'PY'
import sys
start, applied, ready, count = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"{count} Repositories: kubectl apply took {applied - start:.1f} s; apply to all Ready {ready - start:.1f} s")
PY
echo "API writes to operator-managed kinds in 30 s of steady state: $writes"
grep -E 'VmHWM|VmRSS' "/proc/$operator_pid/status" | tr -s ' \t' ' '
echo "operator CPU time: $(ps -o time= -p "$operator_pid")"
echo "operator warnings: $(grep -E 'WARN|ERROR' "$dir/operator.log" | grep -c -v 'cert bypassed' || true)"
grep -E 'WARN|ERROR' "$dir/operator.log" | grep -v 'cert bypassed' | head -5 || true
