#!/usr/bin/env bash
# The crates' layers, checked: each crate depends (outside tests) on exactly the Wharf crates
# below it that this table allows, and each builds on its own, so that feature unification
# in the workspace cannot hide a missing dependency. Libraries leave the Kubernetes version
# to the binaries (k8s-openapi's rule) and are checked with the one the binaries pick.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo metadata --format-version 1 --no-deps --locked | python3 -c '
import json, sys
allowed = {
    "wharf-api": set(),
    "wharf-diagnostics": set(),
    "wharf-storage": {"wharf-api", "wharf-diagnostics"},
    "wharf-upstream": {"wharf-api", "wharf-diagnostics", "wharf-storage"},
    "wharf-core": {"wharf-api", "wharf-diagnostics", "wharf-storage", "wharf-upstream"},
    "wharf-formats": {"wharf-api", "wharf-core", "wharf-storage"},
    "wharf-registry": {"wharf-api", "wharf-diagnostics", "wharf-storage", "wharf-upstream", "wharf-core", "wharf-formats"},
    "wharf-operator": {"wharf-api", "wharf-diagnostics", "wharf-storage"},
    "wharf-cli": set(),
    "wharf-test-harness": {"wharf-api"},
}
wrong = []
for package in json.load(sys.stdin)["packages"]:
    name = package["name"]
    uses = {d["name"] for d in package["dependencies"] if d["name"].startswith("wharf-") and d["kind"] is None}
    if name not in allowed:
        wrong.append(f"{name} is not in the table of layers in tests/layers.sh")
    elif uses - allowed[name]:
        wrong.append(f"{name} may not depend on {sorted(uses - allowed[name])}")
if wrong:
    sys.exit("\n".join(wrong))
'

for crate in wharf-api wharf-diagnostics wharf-storage wharf-upstream wharf-core wharf-formats; do
  K8S_OPENAPI_ENABLED_VERSION=1.37 cargo check --quiet --locked -p "$crate"
done
for crate in wharf-registry wharf-operator wharf-cli wharf-test-harness; do
  cargo check --quiet --locked -p "$crate"
done
echo "layers: every crate depends only on the layers below it and builds on its own"
