"""Admission rules beyond the CRD schema that an InferenceService of ours must pass.

Mirrors, for the fields we use, KServe 0.21's validating webhook
(`pkg/apis/serving/v1beta1/inference_service_validation.go`) and, in Knative mode, the
Knative Serving webhook's field masks (`pkg/apis/serving/fieldmask.go`,
`k8s_validation.go`), which reject the Knative Service KServe creates if the predictor
uses a field Knative does not allow. Each rule names its source so it can be re-checked
after an upgrade.
"""

from __future__ import annotations

import re
from typing import Any

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
KNATIVE_CLASS = "autoscaling.knative.dev/class"

ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
AUTOSCALER_CLASSES = {"hpa", "external", "keda", "none"}
HPA_METRICS = {"cpu", "memory"}
KPA_METRICS = {"concurrency", "rps"}
BLOCKED_ENV = {"PYTHONPATH"}
PREDICTOR_IMPLEMENTATIONS = {
    "model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx",
    "huggingface", "pmml", "lightgbm", "paddle",
}  # fmt: skip

# Knative: PodSpec fields allowed without, and with, a config-features flag.
KNATIVE_POD_ALLOWED = {
    "serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks",
}  # fmt: skip
KNATIVE_POD_FLAGGED = {
    "affinity": "kubernetes.podspec-affinity",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "tolerations": "kubernetes.podspec-tolerations",
    "securityContext": "kubernetes.podspec-securitycontext",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "initContainers": "kubernetes.podspec-init-containers",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
}
KNATIVE_CONTAINER_ALLOWED = {
    "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
    "livenessProbe", "ports", "readinessProbe", "startupProbe", "resources",
    "securityContext", "terminationMessagePath", "terminationMessagePolicy", "volumeMounts",
}  # fmt: skip
KNATIVE_SECURITY_CONTEXT_ALLOWED = {
    "capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
    "allowPrivilegeEscalation", "seccompProfile",
}  # fmt: skip
KNATIVE_PORT_NAMES = {"", "http1", "h2c"}
KNATIVE_DEFAULT_VOLUMES = {"configMap", "secret", "projected", "emptyDir"}

# Fields of the predictor that belong to KServe's ComponentExtensionSpec, not the pod.
COMPONENT_EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
    "labels", "annotations", "deploymentStrategy", "autoScaling", "storageUris",
    "workerSpec",
}  # fmt: skip


def deployment_mode(isvc: dict[str, Any]) -> str:
    return isvc.get("metadata", {}).get("annotations", {}).get(DEPLOYMENT_MODE, "")


def webhook_errors(isvc: dict[str, Any]) -> list[str]:
    """KServe validating webhook (create) for a custom-container predictor."""
    errors: list[str] = []
    meta = isvc.get("metadata", {})
    annotations = meta.get("annotations", {}) or {}
    predictor = isvc.get("spec", {}).get("predictor", {})

    name = meta.get("name", "")
    if not ISVC_NAME.match(name):
        errors.append(
            f"name {name!r} does not match {ISVC_NAME.pattern} (validateInferenceServiceName)"
        )

    if AUTOSCALER_CLASS in annotations and annotations[AUTOSCALER_CLASS] not in AUTOSCALER_CLASSES:
        errors.append(f"[{annotations[AUTOSCALER_CLASS]}] is not a supported autoscaler class type")

    for container in predictor.get("containers", []) + predictor.get("initContainers", []):
        for env in container.get("env", []):
            if env.get("name") in BLOCKED_ENV:
                errors.append(
                    f"setting {env['name']} in container {container.get('name')!r} is not allowed"
                )

    implementations = [k for k in PREDICTOR_IMPLEMENTATIONS if k in predictor]
    if predictor.get("containers"):
        implementations.append("containers")
    if len(implementations) != 1:
        errors.append(f"exactly one predictor implementation expected, got {implementations}")

    # validateAutoScalingCompExtension: only the literal "Standard" selects HPA/KEDA rules;
    # anything else (including the legacy "RawDeployment") is validated as Knative (KPA).
    mode = annotations.get(DEPLOYMENT_MODE, "")
    klass = annotations.get(AUTOSCALER_CLASS, "")
    if mode == "Standard":
        if klass == "hpa":
            errors += _hpa_errors(predictor)
        elif klass == "keda":
            errors += _keda_errors(predictor)
    elif annotations.get(KNATIVE_CLASS) == "hpa.autoscaling.knative.dev":
        errors += _hpa_errors(predictor)
    else:
        errors += _kpa_errors(predictor)

    errors += _canary_errors(isvc)
    lo, hi = predictor.get("minReplicas"), predictor.get("maxReplicas")
    if lo is not None and lo < 0:
        errors.append("minReplicas must be >= 0")
    if lo is not None and hi is not None and hi != 0 and hi < lo:
        errors.append("maxReplicas must be >= minReplicas")
    return errors


def _canary_errors(isvc: dict[str, Any]) -> list[str]:
    """validateCanarySpecs (inference_service_validation.go, KServe 0.21)."""
    canaries = isvc.get("spec", {}).get("canary", [])
    if not canaries:
        return []
    errors = []
    if deployment_mode(isvc) != "Standard":
        errors.append("canary is only supported in Standard deployment mode")
    if storage_uri(isvc) is None:
        errors.append("canary requires a stable predictor with a model")
    stable = isvc["spec"]["predictor"]
    names = [c.get("predictor", {}).get("name", "") for c in canaries]
    if "" in names or len(set(names)) != len(names) or stable.get("name") in names:
        errors.append(f"canary predictor names must be set, distinct and not the stable's: {names}")
    for canary in canaries:
        predictor = canary.get("predictor", {})
        for field in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling", "workerSpec"):
            if predictor.get(field):
                errors.append(f"canary {predictor.get('name')!r} must not set {field}")
        if predictor.get("minReplicas", 0) > stable.get("minReplicas", 1):
            errors.append("canary minReplicas must not exceed the stable predictor's")
    if sum(c.get("trafficPercent", 0) for c in canaries) > 100:
        errors.append("sum of canary trafficPercent values must be <= 100")
    return errors


def runtime_errors(runtime: dict[str, Any]) -> list[str]:
    """What KServe needs of a single-model runtime for the InferenceServices we render."""
    errors = []
    spec = runtime["spec"]
    containers = spec.get("containers", [])
    if [c.get("name") for c in containers][:1] != ["kserve-container"]:
        errors.append("the first container must be kserve-container")
    if spec.get("multiModel"):
        errors.append("multiModel runtimes need ModelMesh")
    ports = [p for c in containers for p in c.get("ports", [])]
    protocols = spec.get("protocolVersions", [])
    if "v2" not in protocols:
        errors.append("protocolVersions must include v2 (the InferenceServices say v2)")
    if ("grpc-v2" in protocols) != any(p.get("name") == "h2c" for p in ports):
        errors.append("grpc-v2 is declared exactly when the gRPC port (h2c) is exposed")
    if not any(f.get("name") == "yolov5" for f in spec.get("supportedModelFormats", [])):
        errors.append("supportedModelFormats must list yolov5")
    return errors


def _hpa_errors(predictor: dict[str, Any]) -> list[str]:
    errors = []
    metric = predictor.get("scaleMetric", "cpu")
    if metric not in HPA_METRICS:
        errors.append(f"[{metric}] is not a supported metric (HPA)")
    target = predictor.get("scaleTarget")
    if target is not None and metric == "cpu" and not 1 <= target <= 100:
        errors.append("the target utilization percentage should be a [1-100] integer")
    for spec in predictor.get("autoScaling", {}).get("metrics", []):
        if spec.get("type") != "Resource" or not spec.get("resource"):
            errors.append(f"invalid HPA metric source type {spec.get('type')!r}")
    return errors


def _keda_errors(predictor: dict[str, Any]) -> list[str]:
    errors = []
    if "scaleMetric" in predictor:
        errors.append("ScaleMetric is not supported for KEDA")
    for spec in predictor.get("autoScaling", {}).get("metrics", []):
        kind = spec.get("type")
        if kind == "Resource":
            res = spec.get("resource") or {}
            target_type = res.get("target", {}).get("type")
            if res.get("name") == "cpu" and target_type != "Utilization":
                errors.append("the cpu target value type should be Utilization")
            if res.get("name") == "memory" and target_type not in ("AverageValue", "Utilization"):
                errors.append("the memory target value type should be AverageValue or Utilization")
            errors += _metric_target_errors(res.get("target", {}))
        elif kind in ("External", "PodMetric"):
            source = spec.get("external" if kind == "External" else "podmetric") or {}
            if not source.get("metric", {}).get("query"):
                errors.append(f"{kind}: the query should not be empty")
            if source.get("target", {}).get("value") is None:
                errors.append(f"{kind}: the target threshold value should not be empty")
            errors += _metric_target_errors(source.get("target", {}))
        else:
            errors.append(f"unknown KEDA metric type {kind!r}")
    return errors


def _metric_target_errors(target: dict[str, Any]) -> list[str]:
    kind = target.get("type")
    field = {"Utilization": "averageUtilization", "AverageValue": "averageValue", "Value": "value"}
    if kind in field and target.get(field[kind]) is None:
        return [f"the {kind} target needs {field[kind]}"]
    if kind == "Utilization" and not 1 <= target["averageUtilization"] <= 100:
        return ["the target utilization percentage should be a [1-100] integer"]
    return []


def _kpa_errors(predictor: dict[str, Any]) -> list[str]:
    errors = []
    if "deploymentStrategy" in predictor:
        errors.append("customizing deploymentStrategy is only supported for raw deployment mode")
    metric = predictor.get("scaleMetric", "concurrency")
    if metric not in KPA_METRICS:
        errors.append(f"[{metric}] is not a supported metric (KPA)")
    if metric == "rps" and predictor.get("scaleTarget", 1) < 1:
        errors.append("the target for rps should be greater than 1")
    return errors


def knative_errors(isvc: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Knative webhook errors, and the config-features flags the spec needs enabled."""
    errors: list[str] = []
    flags: set[str] = set()
    predictor = isvc["spec"]["predictor"]
    for field in predictor:
        if field in COMPONENT_EXTENSION_FIELDS or field in KNATIVE_POD_ALLOWED:
            continue
        if field in KNATIVE_POD_FLAGGED:
            flags.add(KNATIVE_POD_FLAGGED[field])
        elif field == "automountServiceAccountToken" and predictor[field] is False:
            continue
        else:
            errors.append(f"must not set the field(s): spec.template.spec.{field}")

    containers = predictor.get("containers", [])
    serving_ports = [p for c in containers for p in c.get("ports", [])]
    if len(serving_ports) > 1:
        errors.append("more than one container port is set (Knative routes a single port)")
    for port in serving_ports:
        if port.get("name", "") not in KNATIVE_PORT_NAMES:
            errors.append(
                f"port name {port.get('name')!r} must be one of {sorted(KNATIVE_PORT_NAMES)}"
            )
    container_port = serving_ports[0]["containerPort"] if serving_ports else 8080

    for container in containers:
        cname = container.get("name")
        for field in container:
            if field not in KNATIVE_CONTAINER_ALLOWED:
                errors.append(f"container {cname}: must not set the field(s): {field}")
        for field in container.get("securityContext", {}):
            if field not in KNATIVE_SECURITY_CONTEXT_ALLOWED:
                errors.append(f"container {cname}: must not set securityContext.{field}")
        if container.get("securityContext", {}).get("capabilities", {}).get("add"):
            flags.add("kubernetes.containerspec-addcapabilities")
        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(probe_name) or {}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = probe.get(handler, {}).get("port")
                if port is not None and port != container_port:
                    errors.append(
                        f"container {cname}: {probe_name}.{handler}.port {port} must be the "
                        f"container port {container_port}"
                    )
        for env in container.get("env", []):
            if "fieldRef" in env.get("valueFrom", {}) or "resourceFieldRef" in env.get(
                "valueFrom", {}
            ):
                flags.add("kubernetes.podspec-fieldref")

    for volume in predictor.get("volumes", []):
        sources = set(volume) - {"name"}
        if "persistentVolumeClaim" in sources:
            flags.add("kubernetes.podspec-persistent-volume-claim")
        elif not sources <= KNATIVE_DEFAULT_VOLUMES:
            errors.append(
                f"volume {volume.get('name')}: unsupported volume source {sorted(sources)}"
            )

    storage_uri = _storage_uri(predictor)
    if storage_uri and storage_uri.startswith("pvc://"):
        flags.add("kubernetes.podspec-persistent-volume-claim")
    return errors, flags


def _storage_uri(predictor: dict[str, Any]) -> str | None:
    for container in predictor.get("containers", []):
        for env in container.get("env", []):
            if env.get("name") == "STORAGE_URI":
                return env.get("value")
    return None


def storage_uri(isvc: dict[str, Any]) -> str | None:
    """`predictor.model.storageUri` (runtime form) or STORAGE_URI (custom container)."""
    predictor = isvc["spec"]["predictor"]
    if "model" in predictor:
        return predictor["model"].get("storageUri")
    return _storage_uri(predictor)
