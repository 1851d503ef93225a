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
