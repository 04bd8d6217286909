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

{{/* Standard mode canary: the candidate InferenceService (at most 52 characters, so that
KServe's "<name>-predictor" objects stay within 63). */}}
{{- define "yolov5-kserve.canaryName" -}}
{{- printf "%s-canary" (include "yolov5-kserve.fullname" .) -}}
{{- end -}}

{{/* Gateway API HTTPRoute in front of the predictor Service(s); KServe's own routes are
named "<name>" and "<name>-predictor", so this one never collides with them. */}}
{{- define "yolov5-kserve.httpRouteName" -}}
{{- printf "%s-split" (include "yolov5-kserve.fullname" .) -}}
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

{{- define "yolov5-kserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "yolov5-kserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "<registry>/<repository>:<tag>" or "...@<digest>". */}}
{{- define "yolov5-kserve.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
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
{{- end -}}
{{- end -}}
{{- $sel = merge (deepCopy .Values.nodeSelector) $sel -}}
{{- if $sel }}{{ toYaml $sel }}{{ end -}}
{{- end -}}

{{/* Tolerations: the GPU taint when GPUs are requested, then the user's list. */}}
{{- define "yolov5-kserve.tolerations" -}}
{{- $tol := list -}}
{{- if and (gt (int .Values.gpu.count) 0) .Values.gpu.tolerateTaint -}}
{{- $tol = append $tol (dict "key" .Values.gpu.resourceName "operator" "Exists" "effect" "NoSchedule") -}}
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

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "yolov5-kserve.validateValues" -}}
{{- $knative := include "yolov5-kserve.isKnative" . -}}
{{- if and (not $knative) (eq .Values.autoscaling.standard.class "hpa") (lt (int .Values.autoscaling.minReplicas) 1) -}}
{{- fail "autoscaling.minReplicas must be >= 1 with the HPA autoscaler; scale to zero needs autoscaling.standard.class=keda or deploymentMode=Knative" -}}
{{- end -}}
{{- if and (not $knative) (eq .Values.autoscaling.standard.class "keda") (not .Values.autoscaling.standard.kedaMetrics) -}}
{{- fail "autoscaling.standard.class=keda needs autoscaling.standard.kedaMetrics" -}}
{{- end -}}
{{- if lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas) -}}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" -}}
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
{{- if and $knative .Values.httpRoute.enabled -}}
{{- fail "httpRoute.enabled is for deploymentMode=Standard: Knative routes through its own ingress (and splits canary traffic itself)" -}}
{{- end -}}
{{- if and (not $knative) .Values.canary.enabled (not .Values.httpRoute.enabled) -}}
{{- fail "canary.enabled in Standard mode needs httpRoute.enabled: KServe cannot split traffic between InferenceServices, the HTTPRoute does" -}}
{{- end -}}
{{- if and (or .Values.serviceAccount.awsRoleArn .Values.serviceAccount.gcpServiceAccount) (not .Values.serviceAccount.create) -}}
{{- fail "serviceAccount.awsRoleArn / gcpServiceAccount annotate the chart's ServiceAccount: set serviceAccount.create=true (or annotate your own ServiceAccount)" -}}
{{- end -}}
{{- end -}}
