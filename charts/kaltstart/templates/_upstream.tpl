{{/* Model entries served by an OpenAI-compatible server (models[].runtime: vllm or sglang) instead of the
kaltstart runtime: what such an entry may set, and its container. docs/vllm.md describes both. */}}

{{/*
Fails the render for a model entry whose settings contradict its runtime: include with the entry. The kaltstart
runtime speaks protocol kaltstart (the batch wire), so the OpenAI-only settings mean nothing there; vLLM and
SGLang speak protocol openai and have no flags for the kaltstart runtime's device and batching settings.
*/}}
{{- define "kaltstart.model.checkRuntime" -}}
{{- $kind := .runtime | default "kaltstart" }}
{{- if eq $kind "kaltstart" }}
{{- if and (hasKey . "protocol") (ne .protocol "kaltstart") }}
{{- fail (printf "models: %q: protocol %q needs an OpenAI-compatible server: set runtime: vllm or sglang (the kaltstart runtime speaks protocol kaltstart only)" .name .protocol) }}
{{- end }}
{{- range $key := list "upstreamModel" "healthPath" "maxConcurrency" }}
{{- if hasKey $ $key }}
{{- fail (printf "models: %q: %s applies to runtime vllm or sglang only, not to the kaltstart runtime (protocol kaltstart)" $.name $key) }}
{{- end }}
{{- end }}
{{- else }}
{{- if and (hasKey . "protocol") (ne .protocol "openai") }}
{{- fail (printf "models: %q: runtime %s speaks protocol openai, not %q: leave protocol out" .name $kind .protocol) }}
{{- end }}
{{- range $key := list "device" "maxBatchSize" "maxBatchDelay" "adapters" }}
{{- if hasKey $ $key }}
{{- fail (printf "models: %q: %s is a setting of the kaltstart runtime, not of runtime %s: use maxConcurrency (requests in flight per replica) and the server's own flags in extraArgs" $.name $key $kind) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The container of an OpenAI-compatible server: include with (dict "root" $ "entry" $entry "resources"
$resources), where $entry has protocol, upstreamModel and healthPath filled in (models.yaml). The rest
of the pod (volumes, the cache's init container, scheduling) is the kaltstart runtime's: the same node-local cache
directory, /tmp and /dev/shm, the same port (runtime.port, which the Service and the NetworkPolicy open).
*/}}
{{- define "kaltstart.model.upstreamContainer" -}}
{{- $root := .root }}
{{- $rt := $root.Values.runtime }}
{{- $entry := .entry }}
{{- $kind := $entry.runtime }}
{{- $preset := get $root.Values.runtimes $kind }}
{{- /* A Hugging Face id with @revision: the servers take the revision as a flag of its own. */}}
{{- $source := $entry.source }}
{{- $revision := "" }}
{{- if regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*@[^@ ]+$" $source }}
{{- $revision = regexReplaceAll "^[^@]*@" $source "" }}
{{- $source = regexReplaceAll "@.*$" $source "" }}
{{- end }}
{{- $flags := get (dict
  "vllm" (dict "model" "--model" "contextTokens" "--max-model-len")
  "sglang" (dict "model" "--model-path" "contextTokens" "--context-length")) $kind }}
{{- $context := include "kaltstart.containerSecurityContext" $root | fromYaml }}
- name: {{ $kind }}
  image: {{ $preset.image }}
  imagePullPolicy: {{ $preset.pullPolicy }}
  command:
    {{- toYaml $preset.command | nindent 4 }}
  args:
    - {{ $flags.model }}
    - {{ $source | quote }}
    {{- if $revision }}
    - --revision
    - {{ $revision | quote }}
    {{- end }}
    # The name requests arrive with (kaltstart.dev/upstream-model): the gateway rewrites every alias to it.
    - --served-model-name
    - {{ $entry.upstreamModel | quote }}
    - --host
    - "0.0.0.0"
    - --port
    - {{ $rt.port | quote }}
    - --dtype
    - {{ $entry.dtype | default $rt.dtype | quote }}
    {{- if $entry.maxContextTokens }}
    - {{ $flags.contextTokens }}
    - {{ $entry.maxContextTokens | quote }}
    {{- end }}
    {{- range $entry.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    # The pod's user (10001, not the image's root) has no home and no passwd entry: the caches (Triton,
    # torch.compile, FlashInfer, vLLM's) go under /tmp, and USER spares getpass.getuser() a failing lookup.
    - name: HOME
      value: /tmp
    - name: USER
      value: kaltstart
    # Hugging Face's cache on the node-local volume: the weights are downloaded once per node and model
    # (by the prefetch DaemonSet, or the first start) and read from there by every later cold start.
    - name: HF_HOME
      value: {{ printf "%s/huggingface" ($rt.cacheDir | trimSuffix "/") | quote }}
    {{- if $rt.hfToken.existingSecret }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $rt.hfToken.existingSecret }}
          key: {{ $rt.hfToken.key }}
    {{- end }}
    {{- with (concat ($preset.env | default list) ($rt.env | default list) ($entry.env | default list)) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ $rt.port }}
      protocol: TCP
  # The server answers only once the weights are loaded and warmed up: the startup probe gives it the
  # kaltstart runtime's allowance (periodSeconds * failureThreshold) before the liveness probe may restart it.
  startupProbe:
    httpGet:
      path: {{ $entry.healthPath }}
      port: http
    periodSeconds: {{ $rt.startupProbe.periodSeconds }}
    failureThreshold: {{ $rt.startupProbe.failureThreshold }}
    timeoutSeconds: {{ $rt.probeTimeoutSeconds }}
  readinessProbe:
    httpGet:
      path: {{ $entry.healthPath }}
      port: http
    periodSeconds: 2
    failureThreshold: 2
    timeoutSeconds: {{ $rt.probeTimeoutSeconds }}
  livenessProbe:
    httpGet:
      path: {{ $entry.healthPath }}
      port: http
    periodSeconds: 10
    timeoutSeconds: {{ $rt.probeTimeoutSeconds }}
    failureThreshold: 6
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml (mergeOverwrite $context ($preset.securityContext | default dict)) | nindent 4 }}
  volumeMounts:
    - name: model-cache
      mountPath: {{ $rt.cacheDir }}
    - name: tmp
      mountPath: /tmp
    - name: dshm
      mountPath: /dev/shm
{{- end }}
