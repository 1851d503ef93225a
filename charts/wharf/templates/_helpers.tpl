{{/* Name of every object of the release: the release name, with "wharf" unless it has it. */}}
{{- define "wharf.fullname" -}}
{{- if contains "wharf" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-wharf" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator's pods; never change them, a Deployment's selector is immutable. */}}
{{- define "wharf.selectorLabels" -}}
app.kubernetes.io/name: wharf-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wharf.labels" -}}
{{ include "wharf.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "wharf.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "wharf.registryImage" -}}
{{- printf "%s:%s" .Values.registryImage.repository (.Values.registryImage.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The operator's rules, split by scope. Together they are operator/rbac/cluster-role.yaml; apart,
operator/rbac/watch-namespaces/cluster.yaml and namespace.yaml (tests/harness/tests/chart.rs
compares all three). `create` beside `patch` because a server-side apply that creates an object
is authorized as a create; `get` only on Secrets and ConfigMaps, the children a reconcile reads
one by one.
*/}}
{{- define "wharf.clusterScopedRules" -}}
# Namespace labels decide repositoryNamespaces.from: Selector.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
# Cluster-scoped, so no owner reference: the Domain's finalizer deletes it. RBAC cannot
# narrow these verbs by name; cluster-role-binding-guard.yaml narrows them to the registries'
# own bindings.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterrolebindings]
  verbs: [list, watch, create, patch, delete]
# Binding system:auth-delegator (TokenReview) to a registry without holding its rights.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  resourceNames: ["system:auth-delegator"]
  verbs: [bind]
{{- end -}}

{{- define "wharf.namespacedRules" -}}
# The resources it reconciles: read and watch; patch to add and remove its finalizer.
- apiGroups: [wharf.dev]
  resources: [domains, repositories, upstreampolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [wharf.dev]
  resources: [domains/status, repositories/status, upstreampolicies/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion, where OwnerReferencesPermissionEnforcement
# is enabled.
- apiGroups: [wharf.dev]
  resources: [domains/finalizers]
  verbs: [update]
# A Domain's children, applied by server-side apply and watched for drift.
- apiGroups: [""]
  resources: [configmaps, secrets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [serviceaccounts, services]
  verbs: [list, watch, create, patch]
# A filesystem Domain's volume: deleted with deletionPolicy Delete, orphaned with Retain.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch, create, patch, delete]
# get: whether the operator still holds a replica count it hands to an autoscaler.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Removed when replicas drop below 2.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
# Removed when registry.autoscaling is.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# cert-manager's Certificate for a registry with registry.tls.issuerRef; removed when
# the Domain stops asking for one.
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [create, patch, delete]
# registry.expose: an Ingress or a Gateway API HTTPRoute, and registry.networkPolicy;
# removed when the Domain stops asking for them.
- apiGroups: [networking.k8s.io]
  resources: [ingresses, networkpolicies]
  verbs: [create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [create, patch, delete]
# Each registry's ServiceMonitor, where the Prometheus Operator is installed.
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
