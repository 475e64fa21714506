{{/* Names, labels and shared fragments. */}}

{{- define "kaltstart.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kaltstart.fullname" -}}
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

{{- define "kaltstart.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kaltstart.labels" -}}
app.kubernetes.io/name: {{ include "kaltstart.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "kaltstart.commonLabels" . }}
{{- end }}

{{/* Labels that select nothing: added to pod templates next to the selector labels. */}}
{{- define "kaltstart.commonLabels" -}}
helm.sh/chart: {{ include "kaltstart.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "gateway"). */}}
{{- define "kaltstart.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kaltstart.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kaltstart.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kaltstart.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kaltstart.gatewayImage" -}}
{{- printf "%s:%s" .Values.image.gateway.repository (default .Chart.AppVersion .Values.image.gateway.tag) }}
{{- end }}

{{- define "kaltstart.runtimeImage" -}}
{{- printf "%s:%s" .Values.image.runtime.repository (default .Chart.AppVersion .Values.image.runtime.tag) }}
{{- end }}

{{/* The namespaces the gateway serves: gateway.namespaces, or the release's. */}}
{{- define "kaltstart.namespaces" -}}
{{- if .Values.gateway.namespaces }}
{{- join "," .Values.gateway.namespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the bundled Redis is rendered. */}}
{{- define "kaltstart.redis.bundled" -}}
{{- if and (not .Values.redis.url) (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{- define "kaltstart.redis.fullname" -}}
{{- printf "%s-redis" (include "kaltstart.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kaltstart.redis.passwordSecret" -}}
{{- default (include "kaltstart.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* The Secret holding the API key file: gateway.apiKeys.existingSecret, or the one the chart generates. */}}
{{- define "kaltstart.apiKeys.secretName" -}}
{{- default (printf "%s-api-keys" (include "kaltstart.fullname" .) | trunc 63 | trimSuffix "-") .Values.gateway.apiKeys.existingSecret }}
{{- end }}

{{/* Where the gateway container reads its API keys (the Secret volume's directory, and the file in it). */}}
{{- define "kaltstart.apiKeys.dir" -}}
/etc/kaltstart/api-keys
{{- end }}

{{- define "kaltstart.apiKeys.file" -}}
{{ include "kaltstart.apiKeys.dir" . }}/api-keys
{{- end }}

{{/* The ClusterIP Service of the gateway's metrics port (scraped; never the API Service). */}}
{{- define "kaltstart.gateway.metricsService" -}}
{{- printf "%s-gateway-metrics" (include "kaltstart.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name of a model entry: the release's full name and the model name, DNS-safe. */}}
{{- define "kaltstart.model.fullname" -}}
{{- $model := regexReplaceAll "[^a-z0-9-]+" (lower .model.name) "-" | trimAll "-" }}
{{- printf "%s-%s" (include "kaltstart.fullname" .root) $model | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The securityContext of a container that meets the Pod Security Standard "restricted". */}}
{{- define "kaltstart.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kaltstart.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The init container that hands the node-local cache directory to the runtime user. */}}
{{- define "kaltstart.cachePermissions" -}}
- name: cache-permissions
  image: {{ include "kaltstart.runtimeImage" .root }}
  imagePullPolicy: {{ .root.Values.image.runtime.pullPolicy }}
  command: ["chown", "10001:10001", {{ .root.Values.runtime.cacheDir | quote }}]
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
      add: ["CHOWN"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: model-cache
      mountPath: {{ .root.Values.runtime.cacheDir }}
{{- end }}

{{- define "kaltstart.cacheVolume" -}}
- name: model-cache
  hostPath:
    path: {{ .Values.runtime.cache.hostPath }}
    type: DirectoryOrCreate
{{- end }}

{{/*
The REDIS_URL env entries (with REDIS_PASSWORD before it when the bundled Redis is used): the gateway's, and the
runtimes' when they announce themselves.
*/}}
{{- define "kaltstart.redis.env" -}}
{{- if .Values.redis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.url }}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- else }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kaltstart.redis.passwordSecret" . }}
      key: {{ .Values.redis.auth.existingSecretKey }}
- name: REDIS_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "kaltstart.redis.fullname" . }}:6379/0"
{{- end }}
{{- end }}
