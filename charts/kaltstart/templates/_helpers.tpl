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

{{/*
Labels of the objects themselves. Pod templates carry only their selector labels (kaltstart.selectorLabels):
the chart and version labels change with every chart release, and a changed pod template restarts the pods,
so on a pod template they would restart every running model on every upgrade.
*/}}
{{- define "kaltstart.labels" -}}
app.kubernetes.io/name: {{ include "kaltstart.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
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
{{- if and (not .Values.redis.url) (not .Values.redis.existingSecret) (not .Values.redis.external.sentinel.hosts) }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the bundled Redis runs as a primary, replicas and Sentinels (redis.mode: sentinel). */}}
{{- define "kaltstart.redis.sentinel" -}}
{{- if and (include "kaltstart.redis.bundled" .) (eq .Values.redis.mode "sentinel") }}true{{ end }}
{{- end }}

{{/* The DNS name of the bundled Redis StatefulSet's pod number .index (include with (dict "root" $ "index" i)). */}}
{{- define "kaltstart.redis.podHost" -}}
{{- printf "%s-%d.%s.%s.svc" (include "kaltstart.redis.fullname" .root) (int .index) (include "kaltstart.redis.headless" .root) .root.Release.Namespace }}
{{- end }}

{{/* The Sentinels to ask, host:port,host:port: the bundled pods' (port 26379), or redis.external.sentinel.hosts. */}}
{{- define "kaltstart.redis.sentinelHosts" -}}
{{- if include "kaltstart.redis.sentinel" . }}
{{- $hosts := list }}
{{- range $i := until (int .Values.redis.sentinel.replicas) }}
{{- $hosts = append $hosts (printf "%s:26379" (include "kaltstart.redis.podHost" (dict "root" $ "index" $i))) }}
{{- end }}
{{- join "," $hosts }}
{{- else }}
{{- join "," .Values.redis.external.sentinel.hosts }}
{{- end }}
{{- end }}

{{/*
A shell snippet (the bundled Sentinel mode's containers) that sets PRIMARY to the DNS name of the current primary:
what a Sentinel of another pod says, else (a fresh install, every Sentinel down) pod 0. MY_HOST is this pod's name.
The password reaches valkey-cli in its environment (REDISCLI_AUTH), never on its command line.
*/}}
{{- define "kaltstart.redis.findPrimary" -}}
PRIMARY=""
for PEER in {{ range $i := until (int .Values.redis.sentinel.replicas) }}{{ include "kaltstart.redis.podHost" (dict "root" $ "index" $i) }} {{ end }}; do
  [ "$PEER" = "$MY_HOST" ] && continue
  PRIMARY=$(REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 valkey-cli -h "$PEER" -p 26379 --raw sentinel get-master-addr-by-name {{ .Values.redis.sentinel.masterName }} 2>/dev/null | head -n 1) || PRIMARY=""
  [ -n "$PRIMARY" ] && break
done
[ -n "$PRIMARY" ] || PRIMARY={{ include "kaltstart.redis.podHost" (dict "root" . "index" 0) }}
{{- end }}

{{- define "kaltstart.redis.fullname" -}}
{{- printf "%s-redis" (include "kaltstart.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kaltstart.redis.passwordSecret" -}}
{{- default (include "kaltstart.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* The headless Service that gives the bundled Redis StatefulSet's pod its network identity. */}}
{{- define "kaltstart.redis.headless" -}}
{{- printf "%s-redis-headless" (include "kaltstart.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The bundled Redis's user for model pods: PUBLISH on the replicas channel, nothing else (Valkey ACL). */}}
{{- define "kaltstart.redis.announceUser" -}}
announcer
{{- end }}

{{/*
Pod template annotations that roll the pods when the chart-generated Redis Secret changes: Valkey and the
gateway read the password only at start. Empty with redis.auth.existingSecret (the chart cannot see your
Secret: restart them yourself after changing it) and with an external Redis.
*/}}
{{- define "kaltstart.redis.checksum" -}}
{{- if and (include "kaltstart.redis.bundled" .) (not .Values.redis.auth.existingSecret) }}
checksum/redis-secret: {{ include "kaltstart.redis.secretData" . | sha256sum }}
{{- end }}
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

{{/* The init container that hands node-local cache directories to the runtime user: include with (dict "root" $
"mounts" (list (dict "volume" "model-cache" "path" "/var/lib/kaltstart/models") ...)). */}}
{{- define "kaltstart.cachePermissions" -}}
- name: cache-permissions
  image: {{ include "kaltstart.runtimeImage" .root }}
  imagePullPolicy: {{ .root.Values.image.runtime.pullPolicy }}
  command: ["chown", "10001:10001"{{ range .mounts }}, {{ .path | quote }}{{ end }}]
  env:
    # The CUDA base image sets NVIDIA_VISIBLE_DEVICES=all: a chown needs no GPU.
    - name: NVIDIA_VISIBLE_DEVICES
      value: void
  # Every container of the pod has resources, so that a namespace with a ResourceQuota (and no LimitRange)
  # admits the pod.
  resources:
    {{- toYaml .root.Values.runtime.cache.fixPermissionsResources | nindent 4 }}
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
    {{- range .mounts }}
    - name: {{ .volume }}
      mountPath: {{ .path }}
    {{- end }}
{{- end }}

{{/* One model's node-local cache directory, <runtime.cache.hostPath>/<the model's full name>: include with
(dict "root" $ "name" "model-cache" "model" $fullname). A directory per model, so that a model's pod can read and
write its own weights and no other model's. */}}
{{- define "kaltstart.cacheVolume" -}}
- name: {{ .name }}
  hostPath:
    path: {{ printf "%s/%s" (.root.Values.runtime.cache.hostPath | trimSuffix "/") .model }}
    type: DirectoryOrCreate
{{- end }}

{{/* The Secret holding the runtimes' token: runtime.token.existingSecret, or the one the chart generates. */}}
{{- define "kaltstart.runtimeToken.secretName" -}}
{{- default (printf "%s-runtime-token" (include "kaltstart.fullname" .) | trunc 63 | trimSuffix "-") .Values.runtime.token.existingSecret }}
{{- end }}

{{/* The token's env entry, for the gateway (which sends it) and the model pods (which require it). */}}
{{- define "kaltstart.runtimeToken.env" -}}
- name: KALTSTART_RUNTIME_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "kaltstart.runtimeToken.secretName" . }}
      key: {{ .Values.runtime.token.existingSecretKey }}
{{- end }}

{{/*
The data of the chart-generated runtime token Secret: what the Secret holds now (lookup), else new and random
(40 letters and digits). No checksum annotation rolls pods on it: it never changes on an upgrade, and one on the
model pods would restart every running model at each offline render (use existingSecret there, as for Redis).
*/}}
{{- define "kaltstart.runtimeToken.secretData" -}}
{{- $key := .Values.runtime.token.existingSecretKey }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "kaltstart.runtimeToken.secretName" .) | default dict }}
{{- $token := dig "data" $key "" $existing | b64dec | default (randAlphaNum 40) }}
{{- toYaml (dict $key ($token | b64enc)) }}
{{- end }}

{{/*
The data of the chart-generated Redis Secret: the server's password, and (runtime.announce) the password of the
publish-only user of model pods. Each is redis.auth's value, else what the Secret holds now (lookup), else new
and random. Offline renders (helm template, Argo CD) cannot look the Secret up and make new ones every time:
use redis.auth.existingSecret there.
*/}}
{{- define "kaltstart.redis.secretData" -}}
{{- /* Computed once per render and kept in .Values (one map for every template of the chart), so that the
Secret and the checksum annotations see the same random values. */}}
{{- if not (hasKey .Values "_redisSecretData") }}
{{- $auth := .Values.redis.auth }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "kaltstart.redis.fullname" .) | default dict }}
{{- $password := $auth.password | default (dig "data" $auth.existingSecretKey "" $existing | b64dec) }}
{{- $data := dict $auth.existingSecretKey ($password | default (randAlphaNum 32) | b64enc) }}
{{- if .Values.runtime.announce }}
{{- $announce := $auth.announcePassword | default (dig "data" $auth.announcePasswordKey "" $existing | b64dec) }}
{{- $_ := set $data $auth.announcePasswordKey ($announce | default (randAlphaNum 32) | b64enc) }}
{{- end }}
{{- $_ := set .Values "_redisSecretData" $data }}
{{- end }}
{{- toYaml .Values._redisSecretData }}
{{- end }}

{{/*
The gateway's REDIS_URL env entries (with REDIS_PASSWORD before it when the bundled Redis is used): the server's
password, every command.
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
{{- else if .Values.redis.external.sentinel.hosts }}
{{- $s := .Values.redis.external.sentinel }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "redis.external.sentinel.existingSecret: the Secret holding the data nodes' password" $s.existingSecret }}
      key: {{ $s.passwordKey }}
{{- if $s.sentinelPasswordKey }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $s.existingSecret }}
      key: {{ $s.sentinelPasswordKey }}
{{- end }}
- name: REDIS_URL
  value: "redis+sentinel://:$(REDIS_PASSWORD)@{{ include "kaltstart.redis.sentinelHosts" . }}/{{ required "redis.external.sentinel.masterName: the name the Sentinels know the primary by" $s.masterName }}/0{{ if $s.sentinelPasswordKey }}?sentinel_password=$(REDIS_SENTINEL_PASSWORD){{ end }}"
{{- include "kaltstart.redis.waitEnv" $s }}
{{- else if include "kaltstart.redis.sentinel" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kaltstart.redis.passwordSecret" . }}
      key: {{ .Values.redis.auth.existingSecretKey }}
- name: REDIS_URL
  value: "redis+sentinel://:$(REDIS_PASSWORD)@{{ include "kaltstart.redis.sentinelHosts" . }}/{{ .Values.redis.sentinel.masterName }}/0?sentinel_password=$(REDIS_PASSWORD)"
{{- include "kaltstart.redis.waitEnv" .Values.redis.sentinel }}
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

{{/* The gateway's replica wait (KALTSTART_REDIS_WAIT_*), from a map with waitReplicas and waitTimeout. */}}
{{- define "kaltstart.redis.waitEnv" }}
- name: KALTSTART_REDIS_WAIT_REPLICAS
  value: {{ .waitReplicas | quote }}
- name: KALTSTART_REDIS_WAIT_TIMEOUT
  value: {{ .waitTimeout | quote }}
{{- end }}

{{/*
The model pods' REDIS_URL env entries (runtime.announce): the URL of a user that can PUBLISH on the replicas
channel and nothing else. On the bundled Redis, the user "announcer"; on an external one, redis.announceUrl or
redis.announceExistingSecret, required: model pods never get the gateway's URL, which reads and writes every queue.
*/}}
{{- define "kaltstart.redis.announceEnv" -}}
{{- $user := include "kaltstart.redis.announceUser" . }}
{{- if include "kaltstart.redis.sentinel" . }}
- name: REDIS_ANNOUNCE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kaltstart.redis.passwordSecret" . }}
      key: {{ .Values.redis.auth.announcePasswordKey }}
      optional: true
- name: REDIS_URL
  value: "redis+sentinel://{{ $user }}:$(REDIS_ANNOUNCE_PASSWORD)@{{ include "kaltstart.redis.sentinelHosts" . }}/{{ .Values.redis.sentinel.masterName }}/0?sentinel_username={{ $user }}&sentinel_password=$(REDIS_ANNOUNCE_PASSWORD)"
{{- else if and .Values.redis.external.sentinel.hosts (not .Values.redis.announceUrl) (not .Values.redis.announceExistingSecret) }}
{{- $s := .Values.redis.external.sentinel }}
- name: REDIS_ANNOUNCE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $s.existingSecret }}
      key: {{ $s.announcePasswordKey }}
      optional: true
- name: REDIS_URL
  value: "redis+sentinel://{{ $s.announceUser }}:$(REDIS_ANNOUNCE_PASSWORD)@{{ include "kaltstart.redis.sentinelHosts" . }}/{{ $s.masterName }}/0{{ if $s.sentinelPasswordKey }}?sentinel_username={{ $s.announceUser }}&sentinel_password=$(REDIS_ANNOUNCE_PASSWORD){{ end }}"
{{- else if include "kaltstart.redis.bundled" . }}
- name: REDIS_ANNOUNCE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kaltstart.redis.passwordSecret" . }}
      key: {{ .Values.redis.auth.announcePasswordKey }}
      # A Secret of yours without the key still starts the model; its announcements fail (logged), and
      # dispatch waits for its EndpointSlices instead.
      optional: true
- name: REDIS_URL
  value: "redis://{{ include "kaltstart.redis.announceUser" . }}:$(REDIS_ANNOUNCE_PASSWORD)@{{ include "kaltstart.redis.fullname" . }}:6379/0"
{{- else if .Values.redis.announceExistingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.announceExistingSecret }}
      key: {{ .Values.redis.announceExistingSecretKey }}
{{- else if and .Values.redis.announceUrl (ne .Values.redis.announceUrl .Values.redis.url) }}
- name: REDIS_URL
  value: {{ .Values.redis.announceUrl | quote }}
{{- else if .Values.redis.announceUrl }}
{{- fail "redis.announceUrl is the gateway's redis.url: model pods need a URL of their own, of a user that may only PUBLISH on kaltstart:replicas" }}
{{- else }}
{{- fail "runtime.announce with an external Redis (redis.url or redis.existingSecret) needs a publish-only URL for the model pods: set redis.announceUrl or redis.announceExistingSecret (a user that may only PUBLISH on kaltstart:replicas, see values.yaml), or set runtime.announce=false. Model pods never get the gateway's URL, which reads and writes every queue." }}
{{- end }}
{{- end }}

{{/*
progressDeadlineSeconds of a model Deployment: the startup probe's allowance (periodSeconds * failureThreshold)
plus runtime.progressDeadlineMarginSeconds for scheduling (a node to be added) and the image pull, so that a
slow but healthy cold start is never reported as a failed rollout (which Argo CD and helm --wait act on).
*/}}
{{- define "kaltstart.model.progressDeadline" -}}
{{- $probe := .Values.runtime.startupProbe }}
{{- add (mul (int $probe.periodSeconds) (int $probe.failureThreshold)) (int .Values.runtime.progressDeadlineMarginSeconds) }}
{{- end }}
