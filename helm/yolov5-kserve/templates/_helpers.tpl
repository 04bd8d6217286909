{{/*
Naming, labels and the small derivations shared by the templates (Bitnami style, no
dependency on the bitnami/common chart).
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "yolov5-kserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
InferenceService name. KServe derives "<name>-predictor" objects and Knative hostnames
from it, and its webhook requires DNS-1035 ([a-z]([-a-z0-9]*[a-z0-9])?), so keep it to
45 characters and fail early on names starting with a digit.
*/}}
{{- define "yolov5-kserve.fullname" -}}
{{- $name := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $name = .Values.fullnameOverride -}}
{{- else -}}
{{- $chart := default .Chart.Name .Values.nameOverride -}}
{{- if contains $chart .Release.Name -}}
{{- $name = .Release.Name -}}
{{- else -}}
{{- $name = printf "%s-%s" .Release.Name $chart -}}
{{- end -}}
{{- end -}}
{{- $name = $name | trunc 45 | trimSuffix "-" -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "InferenceService name %q is not a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* Name of the served model (`--model_name`, `/v2/models/<name>`): the InferenceService's
name, KServe's convention for runtimes (`{{.Name}}`), unless model.name sets another (custom
container only). */}}
{{- define "yolov5-kserve.modelName" -}}
{{- .Values.model.name | default (include "yolov5-kserve.fullname" .) -}}
{{- end -}}

{{/* The ServingRuntime the InferenceService names (`predictor.model.runtime`). */}}
{{- define "yolov5-kserve.runtimeName" -}}
{{- .Values.servingRuntime.name | default (include "yolov5-kserve.fullname" .) -}}
{{- end -}}

{{- define "yolov5-kserve.usesRuntime" -}}
{{- if .Values.servingRuntime.enabled -}}true{{- end -}}
{{- end -}}

{{- define "yolov5-kserve.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "yolov5-kserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "yolov5-kserve.labels" -}}
app.kubernetes.io/name: {{ include "yolov5-kserve.name" . }}
helm.sh/chart: {{ include "yolov5-kserve.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: yolov5-kserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "yolov5-kserve.isKnative" -}}
{{- if eq .Values.deploymentMode "Knative" -}}true{{- end -}}
{{- end -}}

{{/* The release name by default, so that `helm install yolov5 ...` creates the
ServiceAccount `yolov5` that the docs bind IRSA / Workload Identity to. */}}
{{- define "yolov5-kserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default .Release.Name .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "<registry>/<repository>:<tag>" or "...@<digest>". */}}
{{- define "yolov5-kserve.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- if not (and $registry .Values.image.repository) -}}
{{- fail "set image.registry and image.repository to where you pushed the image built from the repository's Dockerfile (docs/deploy.md, \"The image\"): no public image is published yet" -}}
{{- end -}}
{{- $flavor := .Values.image.flavor | default (ternary "cuda" "cpu" (gt (int .Values.gpu.count) 0)) -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion $flavor) -}}
{{- $repo := .Values.image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $repo }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}
{{- end -}}

{{- define "yolov5-kserve.device" -}}
{{- .Values.model.device | default (ternary "cuda" "cpu" (gt (int .Values.gpu.count) 0)) -}}
{{- end -}}

{{/* Readiness path of the served model: KServe's /v2/health/ready is always 200. */}}
{{- define "yolov5-kserve.readyPath" -}}
{{- printf "/v2/models/%s/ready" .Values.model.name -}}
{{- end -}}

{{/* Node selector: cloud GPU preset, then the user's free-form nodeSelector on top. */}}
{{- define "yolov5-kserve.nodeSelector" -}}
{{- $sel := dict -}}
{{- if gt (int .Values.gpu.count) 0 -}}
{{- if eq .Values.cloud.provider "eks" -}}
{{- with .Values.cloud.eks.instanceType }}{{ $_ := set $sel "node.kubernetes.io/instance-type" . }}{{ end -}}
{{- with .Values.cloud.eks.karpenterGpuName }}{{ $_ := set $sel "karpenter.k8s.aws/instance-gpu-name" . }}{{ end -}}
{{- else if eq .Values.cloud.provider "gke" -}}
{{- with .Values.cloud.gke.accelerator }}{{ $_ := set $sel "cloud.google.com/gke-accelerator" . }}{{ end -}}
{{- with .Values.cloud.gke.gpuPartitionSize }}{{ $_ := set $sel "cloud.google.com/gke-gpu-partition-size" . }}{{ end -}}
{{- with .Values.cloud.gke.gpuSharing.strategy -}}
{{- $_ := set $sel "cloud.google.com/gke-gpu-sharing-strategy" . -}}
{{- $_ := set $sel "cloud.google.com/gke-max-shared-clients-per-gpu" (toString (int $.Values.cloud.gke.gpuSharing.maxSharedClientsPerGpu)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $sel = merge (deepCopy .Values.nodeSelector) $sel -}}
{{- if $sel }}{{ toYaml $sel }}{{ end -}}
{{- end -}}

{{/* Tolerations: the GPU taint when GPUs are requested, then the user's list. */}}
{{- define "yolov5-kserve.tolerations" -}}
{{- $tol := list -}}
{{- if and (gt (int .Values.gpu.count) 0) .Values.gpu.tolerateTaint -}}
{{- $tol = append $tol (dict "key" .Values.gpu.taintKey "operator" "Exists" "effect" "NoSchedule") -}}
{{- end -}}
{{- $tol = concat $tol .Values.tolerations -}}
{{- if $tol }}{{ toYaml $tol }}{{ end -}}
{{- end -}}

{{/* Container resources, with the GPU added to requests and limits. */}}
{{- define "yolov5-kserve.resources" -}}
{{- $res := deepCopy .Values.resources -}}
{{- if gt (int .Values.gpu.count) 0 -}}
{{- $req := default dict $res.requests -}}
{{- $lim := default dict $res.limits -}}
{{- $_ := set $req .Values.gpu.resourceName (toString (int .Values.gpu.count)) -}}
{{- $_ := set $lim .Values.gpu.resourceName (toString (int .Values.gpu.count)) -}}
{{- $_ := set $res "requests" $req -}}
{{- $_ := set $res "limits" $lim -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Image pull secrets as a list of {name: ...}; empty when there are none. */}}
{{- define "yolov5-kserve.imagePullSecrets" -}}
{{- $secrets := concat .Values.global.imagePullSecrets .Values.image.pullSecrets | uniq -}}
{{- range $secrets }}
- name: {{ . }}
{{- end }}
{{- end -}}

{{/* The detector's flags (container args), shared by the runtime and custom-container forms. */}}
{{- define "yolov5-kserve.detectorArgs" -}}
- --img_size={{ int .Values.model.imgSize }}
- --letterbox={{ .Values.model.letterbox }}
- --conf_threshold={{ .Values.model.confThreshold }}
- --iou_threshold={{ .Values.model.iouThreshold }}
- --max_det={{ int .Values.model.maxDet }}
- --device={{ include "yolov5-kserve.device" . }}
{{- with .Values.model.backend }}
- --backend={{ . }}
{{- end }}
{{- with .Values.model.precision }}
- --precision={{ . }}
{{- end }}
{{- with .Values.model.calibrationDir }}
- --calibration_dir={{ . }}
{{- end }}
{{- if not (kindIs "invalid" .Values.model.int8MinAgreement) }}
- --int8_min_agreement={{ .Values.model.int8MinAgreement }}
{{- end }}
{{- if and (eq .Values.model.precision "int8") (gt (int .Values.gpu.count) 0) }}
{{- fail "model.precision int8 runs on the CPU only (ONNX Runtime): set gpu.count to 0, or precision to auto/fp16 for a GPU" }}
{{- end }}
{{- with .Values.model.batching.maxBatchSize }}
- --max_batch_size={{ int . }}
{{- end }}
{{- if not (kindIs "invalid" .Values.model.batching.maxBatchDelayMs) }}
- --max_batch_delay_ms={{ .Values.model.batching.maxBatchDelayMs }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The serving container's fixed part (ports, probes, drain hook, security context, /tmp),
shared by the ServingRuntime and the custom container. Argument: dict "root" (the chart
context) and "modelName" (`{{.Name}}` in a runtime: KServe replaces it with the
InferenceService name, utils.ReplacePlaceholders in
pkg/controller/v1beta1/inferenceservice/utils/utils.go).
*/}}
{{- define "yolov5-kserve.serverContainer" -}}
{{- $v := .root.Values -}}
{{- $knative := include "yolov5-kserve.isKnative" .root -}}
{{- $httpPort := int $v.containerPorts.http -}}
{{- $readyPath := printf "/v2/models/%s/ready" .modelName -}}
ports:
  # Knative routes one port (named http1 for HTTP/1.1); Standard mode also exposes gRPC.
  - name: http1
    containerPort: {{ $httpPort }}
    protocol: TCP
  {{- if not $knative }}
  - name: h2c
    containerPort: {{ int $v.containerPorts.grpc }}
    protocol: TCP
  {{- end }}
{{- if $v.customStartupProbe }}
startupProbe:
  {{- toYaml $v.customStartupProbe | nindent 2 }}
{{- else if $v.startupProbe.enabled }}
startupProbe:
  httpGet:
    path: {{ $readyPath }}
    port: {{ $httpPort }}
  {{- omit $v.startupProbe "enabled" | toYaml | nindent 2 }}
{{- end }}
{{- if $v.customReadinessProbe }}
readinessProbe:
  {{- toYaml $v.customReadinessProbe | nindent 2 }}
{{- else if $v.readinessProbe.enabled }}
readinessProbe:
  httpGet:
    path: {{ $readyPath }}
    port: {{ $httpPort }}
  {{- omit $v.readinessProbe "enabled" | toYaml | nindent 2 }}
{{- end }}
{{- if $v.customLivenessProbe }}
livenessProbe:
  {{- toYaml $v.customLivenessProbe | nindent 2 }}
{{- else if $v.livenessProbe.enabled }}
livenessProbe:
  httpGet:
    path: /v2/health/live
    port: {{ $httpPort }}
  {{- omit $v.livenessProbe "enabled" | toYaml | nindent 2 }}
{{- end }}
{{- if and (not $knative) (gt (int $v.preStopSleepSeconds) 0) }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ int $v.preStopSleepSeconds }}"]
{{- end }}
{{- if $v.containerSecurityContext.enabled }}
securityContext:
  {{- omit $v.containerSecurityContext "enabled" | toYaml | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "yolov5-kserve.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end -}}

{{/* Labels KServe puts on every predictor pod of an InferenceService, the stable and the
canary Deployments alike (constants.InferenceServicePodLabelKey, KServiceComponentLabel in
pkg/constants/constants.go): what a PodDisruptionBudget, PodMonitor or spread selects. */}}
{{- define "yolov5-kserve.predictorPodLabels" -}}
serving.kserve.io/inferenceservice: {{ include "yolov5-kserve.fullname" . }}
component: predictor
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "yolov5-kserve.validateValues" -}}
{{- $knative := include "yolov5-kserve.isKnative" . -}}
{{- if and (not $knative) (lt (int .Values.autoscaling.minReplicas) 1) -}}
{{- fail "autoscaling.minReplicas must be >= 1 in Standard mode: with no pod running, nothing measures the load that would scale one up (neither the HPA's CPU nor the in-flight images KEDA reads); scale to zero needs deploymentMode=Knative" -}}
{{- end -}}
{{- if and (not $knative) (eq .Values.autoscaling.standard.class "keda") (not .Values.autoscaling.standard.kedaMetrics) (not .Values.autoscaling.keda.prometheusAddress) -}}
{{- fail "autoscaling.standard.class=keda needs autoscaling.keda.prometheusAddress (the preset on in-flight images, values-keda.yaml) or autoscaling.standard.kedaMetrics" -}}
{{- end -}}
{{- if and (or .Values.autoscaling.behavior.scaleDownStabilizationSeconds .Values.autoscaling.behavior.scaleUpStabilizationSeconds) (ne .Values.autoscaling.standard.class "keda") -}}
{{- fail "autoscaling.behavior needs autoscaling.standard.class=keda: KServe 0.21 builds the HPA with an empty behavior (createHPA in reconcilers/hpa/hpa_reconciler.go) and passes stabilization windows to KEDA only" -}}
{{- end -}}
{{- if lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas) -}}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" -}}
{{- end -}}
{{- if and $knative .Values.autoscaling.knative.scaleToZero (gt (int .Values.gpu.count) 0) -}}
{{- fail "autoscaling.knative.scaleToZero with a GPU: a cold start (GPU node, image pull, model download, warm-up) outlasts Knative's max-revision-timeout-seconds (600 s by default), so the first request would time out; keep autoscaling.minReplicas >= 1" -}}
{{- end -}}
{{- if and (not $knative) (lt (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) (int .Values.requestTimeoutSeconds))) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + requestTimeoutSeconds (%d): otherwise the kubelet kills requests still in flight" (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) (int .Values.requestTimeoutSeconds))) -}}
{{- end -}}
{{- range .Values.extraEnvVars -}}
{{- if eq .name "PYTHONPATH" -}}
{{- fail "extraEnvVars: KServe's admission webhook rejects PYTHONPATH" -}}
{{- end -}}
{{- if eq .name "STORAGE_URI" -}}
{{- fail "extraEnvVars: set model.storageUri instead of STORAGE_URI" -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.cloud.provider "eks") .Values.serviceAccount.gcpServiceAccount -}}
{{- fail "serviceAccount.gcpServiceAccount (GKE Workload Identity) is set with cloud.provider=eks" -}}
{{- end -}}
{{- if and (eq .Values.cloud.provider "gke") .Values.serviceAccount.awsRoleArn -}}
{{- fail "serviceAccount.awsRoleArn (EKS IRSA) is set with cloud.provider=gke" -}}
{{- end -}}
{{- if and (or .Values.serviceAccount.awsRoleArn .Values.serviceAccount.gcpServiceAccount) (not .Values.serviceAccount.create) -}}
{{- fail "serviceAccount.awsRoleArn / gcpServiceAccount annotate the chart's ServiceAccount: set serviceAccount.create=true (or annotate your own ServiceAccount)" -}}
{{- end -}}
{{- if and .Values.servingRuntime.enabled .Values.model.name -}}
{{- fail "model.name is for servingRuntime.enabled=false (custom container): a ServingRuntime serves the model under the InferenceService name (--model_name={{.Name}}); choose it with fullnameOverride" -}}
{{- end -}}
{{- if and .Values.servingRuntime.enabled (not .Values.model.storageUri) -}}
{{- fail "servingRuntime.enabled needs model.storageUri (KServe requires storageUri on a model spec); to serve a model baked into the image set servingRuntime.enabled=false" -}}
{{- end -}}
{{- $canaryDeployment := printf "%s-%s-predictor" (include "yolov5-kserve.fullname" .) .Values.canary.name -}}
{{- if and .Values.canary.enabled (not $knative) (gt (len $canaryDeployment) 63) -}}
{{- fail (printf "canary: KServe would name the candidate's Deployment and Service %q, %d characters (at most 63): shorten canary.name or set fullnameOverride" $canaryDeployment (len $canaryDeployment)) -}}
{{- end -}}
{{- if and .Values.canary.enabled (not $knative) (not .Values.model.storageUri) -}}
{{- fail "canary.enabled in Standard mode needs model.storageUri: KServe's spec.canary requires a stable predictor with a model (validateCanarySpecs)" -}}
{{- end -}}
{{- end -}}

{{/*
The predictor's implementation: a `model` served by the ServingRuntime (KServe-native,
servingRuntime.enabled) or the custom `containers` form. Argument: dict "root" and
"storageUri" (the stable or the canary model).
*/}}
{{- define "yolov5-kserve.implementation" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- if $v.servingRuntime.enabled -}}
model:
  # The container KServe builds from the runtime's kserve-container (the canary's schema
  # requires the name).
  name: kserve-container
  modelFormat:
    name: yolov5
  runtime: {{ include "yolov5-kserve.runtimeName" $root }}
  protocolVersion: v2
  storageUri: {{ .storageUri | quote }}
  # Appended to the runtime's args (MergeRuntimeContainers in
  # pkg/controller/v1beta1/inferenceservice/utils/utils.go).
  args:
    {{- include "yolov5-kserve.detectorArgs" $root | nindent 4 }}
  {{- with $v.extraEnvVars }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- include "yolov5-kserve.resources" $root | nindent 4 }}
  {{- with $v.extraVolumeMounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $v.extraVolumes }}
volumes:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- else -}}
containers:
  - name: kserve-container
    image: {{ include "yolov5-kserve.image" $root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    # The image's ENTRYPOINT is `python -m predictor --model_dir /mnt/models`.
    args:
      - --model_name={{ include "yolov5-kserve.modelName" $root }}
      - --http_port={{ int $v.containerPorts.http }}
      - --grpc_port={{ int $v.containerPorts.grpc }}
      {{- include "yolov5-kserve.detectorArgs" $root | nindent 6 }}
    {{- if or .storageUri $v.extraEnvVars }}
    env:
      {{- with .storageUri }}
      # Custom containers take the model location from STORAGE_URI; KServe's storage
      # initializer downloads it to /mnt/models before the server starts.
      - name: STORAGE_URI
        value: {{ . | quote }}
      {{- end }}
      {{- with $v.extraEnvVars }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- end }}
    resources:
      {{- include "yolov5-kserve.resources" $root | nindent 6 }}
    {{- include "yolov5-kserve.serverContainer" (dict "root" $root "modelName" (include "yolov5-kserve.modelName" $root)) | nindent 4 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- with $v.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  {{- include "yolov5-kserve.tmpVolume" $root | nindent 2 }}
  {{- with $v.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/*
KEDA metrics: the user's list, or the preset (values-keda.yaml) on the in-flight images of
this InferenceService's stable pods. KServe turns an External metric into a KEDA Prometheus
trigger whose threshold is target.value (getKedaMetrics in reconcilers/keda/keda_reconciler.go);
KEDA's default metric type for it is AverageValue, so the HPA it drives wants
ceil(query result / threshold) replicas. The query therefore sums the work over the pods
and the threshold is the work one replica should hold.
*/}}
{{- define "yolov5-kserve.kedaMetrics" -}}
{{- if .Values.autoscaling.standard.kedaMetrics -}}
{{- toYaml .Values.autoscaling.standard.kedaMetrics -}}
{{- else -}}
- type: External
  external:
    metric:
      backend: prometheus
      serverAddress: {{ .Values.autoscaling.keda.prometheusAddress }}
      query: {{ include "yolov5-kserve.kedaQuery" . | quote }}
    target:
      type: Value
      value: {{ .Values.autoscaling.keda.imagesPerReplica | toString | quote }}
{{- end -}}
{{- end -}}

{{/* Images admitted or waiting for admission and not yet answered, summed over the pods of
the stable Deployment <name>-predictor (pod names <name>-predictor-<hash>-<suffix>; a
Standard-mode canary has fixed replicas and is left out). */}}
{{- define "yolov5-kserve.kedaQuery" -}}
{{- printf "sum(yolov5_inflight_images{namespace=\"%s\",pod=~\"%s-predictor-[a-z0-9]+-[a-z0-9]+\"})" (include "yolov5-kserve.namespace" .) (include "yolov5-kserve.fullname" .) -}}
{{- end -}}

{{- define "yolov5-kserve.scalingBehavior" -}}
{{- $behavior := dict -}}
{{- with .Values.autoscaling.behavior.scaleDownStabilizationSeconds -}}
{{- $_ := set $behavior "scaleDown" (dict "stabilizationWindowSeconds" (int .)) -}}
{{- end -}}
{{- with .Values.autoscaling.behavior.scaleUpStabilizationSeconds -}}
{{- $_ := set $behavior "scaleUp" (dict "stabilizationWindowSeconds" (int .)) -}}
{{- end -}}
{{- if $behavior }}{{ toYaml $behavior }}{{ end -}}
{{- end -}}

{{/* Spread over zones (topologySpread.zones), then the user's constraints. */}}
{{- define "yolov5-kserve.topologySpread" -}}
{{- $constraints := list -}}
{{- if .Values.topologySpread.zones -}}
{{- $constraints = append $constraints (dict "maxSkew" 1 "topologyKey" "topology.kubernetes.io/zone" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" (dict "matchLabels" (include "yolov5-kserve.predictorPodLabels" . | fromYaml))) -}}
{{- end -}}
{{- $constraints = concat $constraints .Values.topologySpreadConstraints -}}
{{- if $constraints }}{{ toYaml $constraints }}{{ end -}}
{{- end -}}
