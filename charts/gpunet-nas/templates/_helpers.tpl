{{/* The chart name, 63 characters at most. */}}
{{- define "gpunet-nas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's resources, 63 characters at most. */}}
{{- define "gpunet-nas.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version label value. */}}
{{- define "gpunet-nas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pod. */}}
{{- define "gpunet-nas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpunet-nas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every resource of the chart. */}}
{{- define "gpunet-nas.labels" -}}
helm.sh/chart: {{ include "gpunet-nas.chart" . }}
{{ include "gpunet-nas.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpunet-nas
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "gpunet-nas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpunet-nas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespaces served in the namespaced scope (the release namespace by default), as a list. */}}
{{- define "gpunet-nas.watchNamespaces" -}}
{{- if .Values.rbac.watchNamespaces }}
{{- toJson .Values.rbac.watchNamespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* True when the operator serves every namespace. */}}
{{- define "gpunet-nas.clusterScope" -}}
{{- if eq .Values.rbac.scope "cluster" }}true{{- else if eq .Values.rbac.scope "namespaced" }}{{- else }}{{ fail "rbac.scope must be cluster or namespaced" }}{{- end }}
{{- end }}

{{/* True when the replicas run with kopf peering. */}}
{{- define "gpunet-nas.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicas) 1) }}true{{- end }}
{{- end }}
