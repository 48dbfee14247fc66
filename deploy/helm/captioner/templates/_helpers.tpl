{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "captioner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already contains the chart name. */}}
{{- define "captioner.fullname" -}}
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

{{- define "captioner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "captioner.labels" -}}
helm.sh/chart: {{ include "captioner.chart" . }}
{{ include "captioner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{/* Labels the Service, PDB, topology spread and monitors select pods by. */}}
{{- define "captioner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "captioner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "captioner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "captioner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference; the GPU build carries a tag suffix. */}}
{{- define "captioner.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.gpu.enabled }}{{ $tag = printf "%s%s" $tag .Values.gpu.imageTagSuffix }}{{ end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Bundle directory inside the container for the chosen model source. */}}
{{- define "captioner.bundleDir" -}}
{{- if eq .Values.model.source "image" }}
{{- .Values.model.imagePath }}
{{- else if eq .Values.model.source "url" }}
{{- printf "%s/bundle" (trimSuffix "/" .Values.model.mountPath) }}
{{- else }}
{{- trimSuffix "/" .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/* Grace period: explicit value (checked) or preStop sleep + drain timeout + 10 s (uvicorn shutdown, margin). */}}
{{- define "captioner.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int .Values.settings.drainTimeoutS) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be >= preStopSleepSeconds + settings.drainTimeoutS (%d)" (int .Values.terminationGracePeriodSeconds) (int $needed)) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Refuse value combinations that would deploy something broken. */}}
{{- define "captioner.validate" -}}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq .Values.model.source "url") (not .Values.model.url.archive) }}
{{- fail "model.source=url needs model.url.archive" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must be <= autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.pendingRequests.enabled) }}
{{- fail "autoscaling needs at least one metric: targetCPUUtilizationPercentage or pendingRequests" }}
{{- end }}
{{- end }}
