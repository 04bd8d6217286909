"""Deployment properties every InferenceService we ship must have (chart and manifests).

Each helper raises AssertionError with a message naming the object and the property.
"""

from __future__ import annotations

from typing import Any

from . import kserve_rules

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
CLOUD_GPU_NODE_LABELS = {
    "eks": {"node.kubernetes.io/instance-type", "karpenter.k8s.aws/instance-gpu-name"},
    "gke": {"cloud.google.com/gke-accelerator"},
}
LIVENESS_PATH = "/v2/health/live"
# Always 200 in KServe, even before the model is loaded: never a readiness signal.
KSERVE_SERVER_READY_PATH = "/v2/health/ready"
# The image's user (Dockerfile USER): a high uid cannot collide with a node user.
APP_UID = 10001


def predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc["spec"]["predictor"]


def kserve_container(isvc: dict[str, Any]) -> dict[str, Any]:
    containers = predictor(isvc)["containers"]
    assert containers[0]["name"] == "kserve-container", "first container must be kserve-container"
    return containers[0]


def arg_values(container: dict[str, Any]) -> dict[str, str]:
    """`--flag=value` args as {flag: value} (every arg we render has that form)."""
    out: dict[str, str] = {}
    for arg in container.get("args", []):
        assert arg.startswith("--") and "=" in arg, f"arg {arg!r} is not --flag=value"
        flag, value = arg.split("=", 1)
        assert flag not in out, f"flag {flag} given twice"
        out[flag] = value
    return out


def is_knative(isvc: dict[str, Any]) -> bool:
    mode = kserve_rules.deployment_mode(isvc)
    assert mode in ("Standard", "Knative"), (
        f"{isvc['metadata']['name']}: serving.kserve.io/deploymentMode must be set explicitly "
        f"to Standard or Knative, got {mode!r}"
    )
    return mode == "Knative"


def http_port(isvc: dict[str, Any]) -> int:
    ports = {p["name"]: p["containerPort"] for p in kserve_container(isvc)["ports"]}
    return ports["http1"]


def assert_admissible(isvc: dict[str, Any], allowed_knative_flags: set[str] = frozenset()) -> None:
    """KServe's webhook and (Knative mode) Knative's webhook would accept it."""
    errors = kserve_rules.webhook_errors(isvc)
    assert not errors, "KServe webhook would reject:\n" + "\n".join(errors)
    if is_knative(isvc):
        errors, flags = kserve_rules.knative_errors(isvc)
        assert not errors, "Knative webhook would reject:\n" + "\n".join(errors)
        assert flags <= allowed_knative_flags, (
            f"needs Knative feature flags {sorted(flags - allowed_knative_flags)} "
            "(document them or drop the fields)"
        )


def assert_gpu_scheduling(
    isvc: dict[str, Any], cloud: str, count: int = 1, resource: str = GPU_RESOURCE
) -> None:
    """Requests `resource` (a MIG profile or the whole GPU) and tolerates the GPU taint,
    whose key is nvidia.com/gpu whatever the resource."""
    p = predictor(isvc)
    resources = kserve_container(isvc)["resources"]
    for section in ("requests", "limits"):
        assert str(resources[section].get(resource)) == str(count), (
            f"{section} must ask for {count} {resource}: {resources}"
        )
    assert GPU_TOLERATION in p.get("tolerations", []), (
        f"must tolerate the GPU taint {GPU_TOLERATION}: {p.get('tolerations')}"
    )
    selectors = set(p.get("nodeSelector", {})) & CLOUD_GPU_NODE_LABELS[cloud]
    assert selectors, (
        f"{cloud}: nodeSelector must select GPU nodes by one of {CLOUD_GPU_NODE_LABELS[cloud]}"
    )
    assert all(p["nodeSelector"][label] for label in selectors), "empty GPU node selector value"
    assert arg_values(kserve_container(isvc))["--device"].startswith("cuda")


def assert_cpu_only(isvc: dict[str, Any]) -> None:
    p = predictor(isvc)
    resources = kserve_container(isvc)["resources"]
    for section in ("requests", "limits"):
        assert GPU_RESOURCE not in resources.get(section, {}), (
            f"CPU profile asks for a GPU: {resources}"
        )
    assert GPU_TOLERATION not in p.get("tolerations", [])
    gpu_labels = set().union(*CLOUD_GPU_NODE_LABELS.values())
    assert not set(p.get("nodeSelector", {})) & gpu_labels, p.get("nodeSelector")
    assert arg_values(kserve_container(isvc))["--device"] == "cpu"


def assert_resources(isvc: dict[str, Any]) -> None:
    for c in predictor(isvc)["containers"] + predictor(isvc).get("initContainers", []):
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert c.get("resources", {}).get(section, {}).get(resource), (
                    f"container {c['name']}: resources.{section}.{resource} is not set"
                )


def assert_probes(isvc: dict[str, Any], model_name: str) -> None:
    c = kserve_container(isvc)
    port = http_port(isvc)
    ready = f"/v2/models/{model_name}/ready"
    expected = {"readinessProbe": ready, "startupProbe": ready, "livenessProbe": LIVENESS_PATH}
    for probe, path in expected.items():
        assert probe in c, f"{probe} is missing"
        get = c[probe].get("httpGet", {})
        assert get.get("path") == path, f"{probe} must GET {path}, not {get.get('path')}"
        assert get.get("port") == port, f"{probe} must probe the HTTP port {port}"
        assert get.get("path") != KSERVE_SERVER_READY_PATH
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe].get("successThreshold", 1) == 1, f"{probe}.successThreshold must be 1"
    startup_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup_budget >= 300, f"startup probe allows only {startup_budget}s for model load"


def assert_draining(isvc: dict[str, Any]) -> None:
    p = predictor(isvc)
    c = kserve_container(isvc)
    assert p.get("timeout", 0) > 0, "predictor.timeout (request timeout) must be set"
    if is_knative(isvc):
        # Knative rejects lifecycle hooks and terminationGracePeriodSeconds; its queue-proxy
        # drains and the revision timeout bounds termination.
        assert "lifecycle" not in c and "terminationGracePeriodSeconds" not in p
        deadline = p.get("annotations", {}).get("serving.knative.dev/progress-deadline", "600s")
        seconds = int(deadline[:-1]) * {"s": 1, "m": 60, "h": 3600}[deadline[-1]]
        budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert seconds > budget, f"progress deadline {deadline} < startup probe budget {budget}s"
        return
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) > 0, f"preStop must sleep: {command}"
    grace = p["terminationGracePeriodSeconds"]
    assert grace > int(command[1]), f"terminationGracePeriodSeconds {grace} <= preStop sleep"


def assert_security(isvc: dict[str, Any]) -> None:
    p = predictor(isvc)
    for c in p["containers"]:
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, f"{c['name']}: runAsNonRoot"
        assert sc.get("runAsUser", APP_UID) == APP_UID, f"{c['name']}: runAsUser must be {APP_UID}"
        assert sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c['name']}: drop ALL"
        assert sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem"
        assert not sc.get("privileged"), f"{c['name']}: privileged"
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{c['name']}: needs a writable /tmp with a read-only root"
        volume = next(v for v in p["volumes"] if v["name"] == mounts["/tmp"])
        assert "emptyDir" in volume, "/tmp must be an emptyDir"
    if not is_knative(isvc):
        pod_sc = p.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser") == APP_UID
    if p.get("automountServiceAccountToken") is not None:
        assert p["automountServiceAccountToken"] is False


def assert_autoscaling(isvc: dict[str, Any]) -> None:
    p = predictor(isvc)
    annotations = isvc["metadata"].get("annotations", {})
    assert p["maxReplicas"] >= max(p["minReplicas"], 1), "maxReplicas must allow at least one pod"
    if is_knative(isvc):
        assert kserve_rules.AUTOSCALER_CLASS not in annotations
        assert p["scaleMetric"] in ("concurrency", "rps") and p["scaleTarget"] >= 1
        assert p["minReplicas"] >= 0
        return
    klass = annotations.get(kserve_rules.AUTOSCALER_CLASS)
    assert klass in ("hpa", "keda"), f"Standard mode must scale with HPA or KEDA, got {klass!r}"
    if klass == "hpa":
        assert p["minReplicas"] >= 1, "HPA cannot scale to zero"
        assert p["scaleMetric"] in ("cpu", "memory") and 1 <= p["scaleTarget"] <= 100
    else:
        assert p["autoScaling"]["metrics"], "KEDA needs autoScaling.metrics"
        assert "scaleMetric" not in p


def assert_storage(isvc: dict[str, Any], scheme: str | None) -> None:
    """The model comes from `model.storageUri` (runtime form) or STORAGE_URI on
    kserve-container (custom-container contract)."""
    p = predictor(isvc)
    assert "storageUri" not in p and "storageUris" not in p, "the model's storageUri, not the pod's"
    if "model" in p:
        assert p["model"]["modelFormat"] == {"name": "yolov5"}, p["model"]["modelFormat"]
        assert p["model"]["protocolVersion"] == "v2"
    uri = kserve_rules.storage_uri(isvc)
    if scheme is None:
        assert uri is None
    else:
        assert uri and uri.startswith(f"{scheme}://"), f"STORAGE_URI {uri!r} is not {scheme}://"
    if "containers" in p:
        names = [e["name"] for e in kserve_container(isvc).get("env", [])]
        assert names.count("STORAGE_URI") <= 1


def assert_ports(isvc: dict[str, Any]) -> None:
    ports = kserve_container(isvc)["ports"]
    if is_knative(isvc):
        assert [p["name"] for p in ports] == ["http1"], "Knative: exactly one port, http1"
    else:
        assert [p["name"] for p in ports] == ["http1", "h2c"], "Standard: HTTP and gRPC (h2c)"


def assert_all(isvc: dict[str, Any], model_name: str) -> None:
    assert_resources(isvc)
    assert_probes(isvc, model_name)
    assert_draining(isvc)
    assert_security(isvc)
    assert_autoscaling(isvc)
    assert_ports(isvc)


def pod_monitor_errors(monitor: dict[str, Any]) -> list[str]:
    """A Prometheus Operator PodMonitor that scrapes the predictor pods' /metrics."""
    errors = []
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"apiVersion {monitor.get('apiVersion')!r}")
    labels = monitor["spec"]["selector"].get("matchLabels", {})
    if labels.get("component") != "predictor" or not labels.get(
        "serving.kserve.io/inferenceservice"
    ):
        errors.append(f"must select KServe's predictor pod labels, not {labels}")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint.get("path") != "/metrics" or endpoint.get("port") not in ("http1", "user-port"):
            errors.append(f"scrape /metrics on the HTTP port: {endpoint}")
    return errors
