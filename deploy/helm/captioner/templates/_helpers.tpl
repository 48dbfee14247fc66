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

{{/* ServiceAccount of the RayJob's pods (batchJob.serviceAccount), separate from the service's. */}}
{{- define "captioner.batch.serviceAccountName" -}}
{{- if .Values.batchJob.serviceAccount.create }}
{{- default (printf "%s-batch" (include "captioner.fullname" . | trunc 57 | trimSuffix "-")) .Values.batchJob.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.batchJob.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ray image (`docker build --target ray`): appVersion-ray unless batchJob.image.tag is set. */}}
{{- define "captioner.batch.image" -}}
{{- $tag := default (printf "%s-ray" .Chart.AppVersion) .Values.batchJob.image.tag }}
{{- printf "%s:%s" .Values.batchJob.image.repository $tag }}
{{- end }}

{{/* One shell word: single-quoted unless made only of safe characters (the entrypoint runs in a shell). */}}
{{- define "captioner.shellQuote" -}}
{{- $s := toString . }}
{{- if regexMatch "^[A-Za-z0-9_./:=@%+,-]+$" $s }}
{{- $s }}
{{- else }}
{{- printf "'%s'" (replace "'" "'\\''" $s) }}
{{- end }}
{{- end }}

{{/* `captioner caption ...`: the RayJob's entrypoint. */}}
{{- define "captioner.batch.entrypoint" -}}
{{- $b := .Values.batchJob }}
{{- $words := list "captioner" "caption" }}
{{- range (kindIs "string" $b.input | ternary (list $b.input) $b.input) }}
{{- $words = append $words (include "captioner.shellQuote" .) }}
{{- end }}
{{- $words = concat $words (list "--out" (include "captioner.shellQuote" $b.output) "--engine" "ray" "--address" "auto") }}
{{- $words = concat $words (list "--actors" (printf "%d:%d" (int $b.actors.min) (int $b.actors.max)) "--cpus-per-actor" (int $b.cpusPerActor | toString)) }}
{{- $words = concat $words (list "--batch-size" (int $b.batchSize | toString) "--beam-size" (int $b.beamSize | toString) "--num-captions" (int $b.numCaptions | toString)) }}
{{- range $b.extraArgs }}
{{- $words = append $words (include "captioner.shellQuote" .) }}
{{- end }}
{{- join " " $words }}
{{- end }}

{{/* Refuse batchJob values that would start a cluster for a job that cannot run. */}}
{{- define "captioner.batch.validate" -}}
{{- $b := .Values.batchJob }}
{{- if not $b.input }}
{{- fail "batchJob.enabled needs batchJob.input" }}
{{- end }}
{{- if not $b.output }}
{{- fail "batchJob.enabled needs batchJob.output" }}
{{- end }}
{{- if gt (int $b.actors.min) (int $b.actors.max) }}
{{- fail (printf "batchJob.actors.min (%d) must be <= batchJob.actors.max (%d)" (int $b.actors.min) (int $b.actors.max)) }}
{{- end }}
{{- if gt (int $b.numCaptions) (int $b.beamSize) }}
{{- fail (printf "batchJob.numCaptions (%d) must be <= batchJob.beamSize (%d)" (int $b.numCaptions) (int $b.beamSize)) }}
{{- end }}
{{- if and (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://" $b.output) (not (hasPrefix "gs://" $b.output)) }}
{{- fail (printf "batchJob.output (%s) must be a path on batchJob.volumes or a gs:// folder" $b.output) }}
{{- end }}
{{- range (kindIs "string" $b.input | ternary (list $b.input) $b.input) }}
{{- if and (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://" .) (not (regexMatch "^(https?|gs)://" .)) }}
{{- fail (printf "batchJob.input (%s): only paths on batchJob.volumes, gs:// objects and http(s) URLs are read" .) }}
{{- end }}
{{- end }}
{{- if hasKey $b.worker.rayStartParams "num-cpus" }}
{{- fail "batchJob.worker.rayStartParams cannot set num-cpus: a worker's CPUs are batchJob.cpusPerActor" }}
{{- end }}
{{- end }}

{{/* Environment of the Ray head and worker containers: ONNX Runtime threads = the actor's CPUs. */}}
{{- define "captioner.batch.env" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: CAPTION_INTRA_OP_THREADS
  value: {{ int .Values.batchJob.cpusPerActor | quote }}
- name: CAPTION_INTER_OP_THREADS
  value: "1"
- name: CAPTION_BUNDLE_DIR
  value: /app/models/default
{{- with .Values.batchJob.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the RayJob and its pods: not the service's selector labels (no Service or PDB picks them). */}}
{{- define "captioner.batch.podLabels" -}}
app.kubernetes.io/name: {{ include "captioner.name" . }}-batch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: batch
app.kubernetes.io/part-of: {{ include "captioner.name" . }}
{{- end }}

{{/* Pod settings shared by the head, worker and submitter pods. */}}
{{- define "captioner.batch.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.batchJob.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.batchJob.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:  # last: the head and worker templates append batchJob.volumes (not the submitter)
  - name: tmp
    emptyDir: {}
{{- end }}
