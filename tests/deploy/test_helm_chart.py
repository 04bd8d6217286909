"""The Helm chart: lint, render every profile in both deployment modes, validate strictly."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from . import checks, kserve_rules, kserve_runtime, kube_schema, tools, validate
from .cases import CASE_IDS, CASES, Case

pytestmark = pytest.mark.usefixtures("helm")

CHART = tools.CHART_DIR
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
VALUES_SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def _render(case: Case) -> list[dict[str, Any]]:
    return tools.render(case.values_files, case.set_values)


def _isvcs(case: Case) -> list[dict[str, Any]]:
    """Each InferenceService predictor (stable, canaries) as the pod KServe builds."""
    objects = _render(case)
    runtimes = validate.runtimes_for(objects)
    return [
        form
        for isvc in tools.by_kind(objects, "InferenceService")
        for form in validate.predictor_forms(isvc, runtimes)
    ]


def _isvc(values_files: list[str] | None = None, set_values: dict[str, Any] | None = None):
    """The one InferenceService of a render, as the pod KServe builds (runtime merged in)."""
    objects = tools.render(values_files or [], set_values or {})
    return validate.predictor_forms(tools.one(objects, "InferenceService"),
                                    validate.runtimes_for(objects))[0]  # fmt: skip


# --------------------------------------------------------------------------------------
# Chart files
# --------------------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    for name in (
        "values.yaml", "values.schema.json", "values-eks.yaml", "values-gke.yaml",
        "templates/_helpers.tpl", "templates/inferenceservice.yaml",
        "templates/serviceaccount.yaml", "templates/servingruntime.yaml",
        "templates/poddisruptionbudget.yaml", "templates/podmonitor.yaml", "templates/NOTES.txt",
        "values-keda.yaml",
    ):  # fmt: skip
        assert (CHART / name).is_file(), name


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_helm_lint_strict(case: Case) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", tools.KUBE_VERSION]
    args += tools._value_args(case.values_files, case.set_values)
    proc = tools.run_helm(*args, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """Documented value paths: leaves, empty maps/lists and lists (documented as a whole)."""
    if isinstance(node, dict) and node:
        out: list[str] = []
        for key, value in node.items():
            out += _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [prefix]


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^## @param (\S+) \S", text, flags=re.M))
    leaves = set(_leaf_paths(VALUES))
    assert not leaves - documented, (
        f"values without a `## @param` line: {sorted(leaves - documented)}"
    )
    assert not documented - leaves, (
        f"`@param` lines for missing values: {sorted(documented - leaves)}"
    )


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        out.add(path)
        out |= _schema_paths(sub, path)
    return out


def _typed_in_schema(path: str) -> bool:
    node = VALUES_SCHEMA
    for key in path.split("."):
        if key in node.get("properties", {}):
            node = node["properties"][key]
        else:
            # a typed map (resources.requests, nodeSelector, ...) or untyped
            return isinstance(node.get("additionalProperties"), dict)
    return True


def test_values_schema_covers_every_value() -> None:
    jsonschema.Draft7Validator.check_schema(VALUES_SCHEMA)
    schema_paths = _schema_paths(VALUES_SCHEMA)
    leaves = set(_leaf_paths(VALUES))
    untyped = [leaf for leaf in leaves if not _typed_in_schema(leaf)]
    assert not untyped, f"values not typed in the schema: {sorted(untyped)}"
    # No stale schema entries: every schema property is a value or a value's parent.
    prefixes = {".".join(p.split(".")[:i]) for p in leaves for i in range(1, p.count(".") + 2)}
    stale = {p for p in schema_paths if p not in prefixes}
    stale -= {"containerSecurityContext.capabilities.add"}  # typed for users, unset by default
    assert not stale, f"schema properties without a value: {sorted(stale)}"


@pytest.mark.parametrize(
    "values_file",
    [
        "values.yaml",
        "values-eks.yaml",
        "values-gke.yaml",
        "values-keda.yaml",
        *sorted(str(p.relative_to(CHART)) for p in (CHART / "ci").glob("*.yaml")),
    ],
)
def test_values_files_match_schema(values_file: str) -> None:
    merged = _deep_merge(VALUES, yaml.safe_load((CHART / values_file).read_text()) or {})
    errors = [e.message for e in jsonschema.Draft7Validator(VALUES_SCHEMA).iter_errors(merged)]
    assert not errors, errors


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _deep_merge(base.get(key), value) if key in base else value
        return out
    return override


def test_hand_written_yaml_lints() -> None:
    config = YamlLintConfig(file=str(Path(__file__).parent / "yamllint.yaml"))
    files = [
        CHART / "Chart.yaml",
        *sorted(CHART.glob("values*.yaml")),
        *sorted((CHART / "ci").glob("*.yaml")),
    ]
    problems = [
        f"{f.relative_to(tools.REPO_ROOT)}:{p.line}:{p.column} {p.desc} ({p.rule})"
        for f in files
        for p in linter.run(f.read_text(), config, str(f))
    ]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------
# Rendered objects: strict schemas and admission rules
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rendered_objects_are_valid(case: Case) -> None:
    objects = _render(case)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == case.kinds, kinds
    assert all(obj["metadata"]["namespace"] == "models" for obj in objects)
    validate.assert_valid(objects, case.knative_flags)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rendered_yaml_lints(case: Case) -> None:
    config = YamlLintConfig(file=str(Path(__file__).parent / "yamllint-rendered.yaml"))
    text = tools.render_text(case.values_files, case.set_values)
    problems = [f"{p.line}:{p.column} {p.desc} ({p.rule})" for p in linter.run(text, config)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rendered_inferenceservice_properties(case: Case) -> None:
    merged = _merged_values(case)
    objects = _render(case)
    runtimes = validate.runtimes_for(objects)
    (isvc,) = tools.by_kind(objects, "InferenceService")
    canaries = kserve_runtime.canary_predictors(isvc)
    assert bool(canaries) == case.canary
    for spec in [isvc, *canaries]:
        checks.assert_storage(spec, case.storage_scheme)
    stable, *canary_pods = validate.predictor_forms(isvc, runtimes)
    # A runtime serves the model under the InferenceService name ({{.Name}}).
    model_name = merged["model"]["name"] or isvc["metadata"]["name"]
    checks.assert_all(stable, model_name)
    for pod in canary_pods:  # fixed replicas, no autoscaling of their own
        checks.assert_probes(pod, model_name)
        checks.assert_security(pod)
        checks.assert_draining(pod)
    for pod in [stable, *canary_pods]:
        assert checks.is_knative(pod) == case.knative
        if case.cloud:
            checks.assert_gpu_scheduling(pod, case.cloud)
            image = checks.kserve_container(pod)["image"]
            assert image.endswith("-cuda") or "@sha256:" in image, image
        else:
            checks.assert_cpu_only(pod)


def _merged_values(case: Case) -> dict[str, Any]:
    merged = VALUES
    for f in case.values_files:
        merged = _deep_merge(merged, yaml.safe_load((CHART / f).read_text()))
    return merged


# --------------------------------------------------------------------------------------
# Specific behaviour
# --------------------------------------------------------------------------------------


def test_gpu_count_zero_means_cpu_even_with_a_cloud_profile() -> None:
    isvc = _isvc(["values-eks.yaml"], {"gpu.count": 0, "model.device": ""})
    checks.assert_cpu_only(isvc)
    assert "nodeSelector" not in checks.predictor(isvc)
    assert checks.kserve_container(isvc)["image"].endswith("-cpu")


def test_mig_slice_keeps_the_gpu_toleration() -> None:
    """A MIG profile is another resource; the GPU nodes' taint key stays nvidia.com/gpu."""
    isvc = _isvc(["values-eks.yaml"], {"gpu.resourceName": "nvidia.com/mig-1g.10gb"})
    checks.assert_gpu_scheduling(isvc, "eks", resource="nvidia.com/mig-1g.10gb")
    assert checks.predictor(isvc)["tolerations"] == [checks.GPU_TOLERATION]
    assert "nvidia.com/gpu" not in checks.kserve_container(isvc)["resources"]["limits"]


def test_gke_gpu_sharing_and_partitions_select_their_node_pools() -> None:
    shared = _isvc(
        ["values-gke.yaml"],
        {"cloud.gke.gpuSharing.strategy": "time-sharing",
         "cloud.gke.gpuSharing.maxSharedClientsPerGpu": 4},
    )  # fmt: skip
    assert checks.predictor(shared)["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "cloud.google.com/gke-gpu-sharing-strategy": "time-sharing",
        "cloud.google.com/gke-max-shared-clients-per-gpu": "4",
    }
    checks.assert_gpu_scheduling(shared, "gke")
    mig = _isvc(
        ["values-gke.yaml"],
        {"cloud.gke.accelerator": "nvidia-tesla-a100", "cloud.gke.gpuPartitionSize": "1g.5gb"},
    )
    assert checks.predictor(mig)["nodeSelector"]["cloud.google.com/gke-gpu-partition-size"] == (
        "1g.5gb"
    )
    checks.assert_gpu_scheduling(mig, "gke")


@pytest.mark.parametrize("profile", ["values-eks.yaml", "values-gke.yaml"])
def test_gpu_profiles_budget_disruptions_and_spread_over_zones(profile: str) -> None:
    objects = tools.render([profile])
    pdb = tools.one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": "yolov5-yolov5-kserve",
                                     "component": "predictor"}},
    }  # fmt: skip
    (spread,) = checks.predictor(tools.one(objects, "InferenceService"))[
        "topologySpreadConstraints"
    ]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"] == pdb["spec"]["selector"]
    knative = tools.render([profile], {"deploymentMode": "Knative"})
    assert not tools.by_kind(knative, "PodDisruptionBudget")


def test_grace_period_covers_the_drain() -> None:
    p = checks.predictor(tools.one(tools.render(), "InferenceService"))
    assert p["terminationGracePeriodSeconds"] >= 10 + p["timeout"]


def test_karpenter_gpu_selector() -> None:
    isvc = _isvc(
        ["values-eks.yaml"], {"cloud.eks.instanceType": "", "cloud.eks.karpenterGpuName": "l4"}
    )
    assert checks.predictor(isvc)["nodeSelector"] == {"karpenter.k8s.aws/instance-gpu-name": "l4"}
    checks.assert_gpu_scheduling(isvc, "eks")


def test_free_form_scheduling_is_merged_with_presets() -> None:
    isvc = tools.one(
        tools.render(
            ["values-gke.yaml"],
            {
                "nodeSelector.pool": "inference",
                "tolerations[0].key": "dedicated",
                "tolerations[0].operator": "Equal",
                "tolerations[0].value": "ml",
                "tolerations[0].effect": "NoSchedule",
                "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                ".nodeSelectorTerms[0].matchExpressions[0].key": "topology.kubernetes.io/zone",
                "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                ".nodeSelectorTerms[0].matchExpressions[0].operator": "Exists",
            },
        ),
        "InferenceService",
    )
    p = checks.predictor(isvc)
    assert p["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "pool": "inference",
    }
    assert p["tolerations"] == [
        checks.GPU_TOLERATION,
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    ]
    assert "nodeAffinity" in p["affinity"]
    assert not kube_schema.isvc_errors(isvc)


@pytest.mark.parametrize("runtime", [True, False], ids=["runtime", "custom-container"])
def test_model_flags_flow_into_container_args(runtime: bool) -> None:
    isvc = _isvc(
        set_values={
            "servingRuntime.enabled": runtime,
            **({} if runtime else {"model.name": "traffic"}),
            "model.imgSize": 1280,
            "model.letterbox": "rect",
            "model.confThreshold": 0.4,
            "model.iouThreshold": 0.6,
            "model.maxDet": 300,
            "model.device": "cuda:1",
            "model.backend": "onnxruntime",
            "model.batching.maxBatchSize": 16,
            "model.batching.maxBatchDelayMs": 7,
            "containerPorts.http": 9000,
            "containerPorts.grpc": 9001,
            "gpu.count": 1,
        }
    )
    model_name = "yolov5-yolov5-kserve" if runtime else "traffic"
    args = checks.arg_values(checks.kserve_container(isvc))
    assert args == {
        "--model_name": model_name,
        "--http_port": "9000",
        "--grpc_port": "9001",
        "--img_size": "1280",
        "--letterbox": "rect",
        "--conf_threshold": "0.4",
        "--iou_threshold": "0.6",
        "--max_det": "300",
        "--device": "cuda:1",
        "--backend": "onnxruntime",
        "--max_batch_size": "16",
        "--max_batch_delay_ms": "7",
    }
    checks.assert_probes(isvc, model_name)
    assert [p["containerPort"] for p in checks.kserve_container(isvc)["ports"]] == [9000, 9001]


def test_int8_flags_flow_into_container_args() -> None:
    isvc = _isvc(
        set_values={
            "model.precision": "int8",
            "model.calibrationDir": "/mnt/models/calibration",
            "model.int8MinAgreement": 0.97,
        }
    )
    args = checks.arg_values(checks.kserve_container(isvc))
    assert args["--precision"] == "int8"
    assert args["--calibration_dir"] == "/mnt/models/calibration"
    assert args["--int8_min_agreement"] == "0.97"
    assert args["--device"] == "cpu"


def test_batching_flags_absent_by_default() -> None:
    args = checks.arg_values(checks.kserve_container(_isvc()))
    assert "--max_batch_size" not in args and "--max_batch_delay_ms" not in args


def test_baked_model_has_no_storage_uri() -> None:
    isvc = tools.one(
        tools.render(set_values={"model.storageUri": "", "servingRuntime.enabled": False}),
        "InferenceService",
    )
    checks.assert_storage(isvc, None)
    assert not kube_schema.isvc_errors(isvc)


@pytest.mark.parametrize(
    ("profile", "annotation", "value"),
    [
        (
            "values-eks.yaml",
            "eks.amazonaws.com/role-arn",
            "arn:aws:iam::111122223333:role/yolov5-kserve-model-reader",
        ),
        (
            "values-gke.yaml",
            "iam.gke.io/gcp-service-account",
            "yolov5-model-reader@my-project.iam.gserviceaccount.com",
        ),
    ],
)
def test_cloud_identity_service_account(profile: str, annotation: str, value: str) -> None:
    objects = tools.render([profile])
    sa = tools.one(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"][annotation] == value
    assert sa["automountServiceAccountToken"] is False
    assert (
        checks.predictor(tools.one(objects, "InferenceService"))["serviceAccountName"]
        == sa["metadata"]["name"]
    )


def test_knative_scale_to_zero() -> None:
    isvc = tools.one(tools.render(["ci/knative-scale-to-zero-values.yaml"]), "InferenceService")
    p = checks.predictor(isvc)
    assert p["minReplicas"] == 0 and p["maxReplicas"] == 5
    assert (p["scaleMetric"], p["scaleTarget"], p["containerConcurrency"]) == ("concurrency", 2, 8)
    assert p["annotations"]["autoscaling.knative.dev/scale-down-delay"] == "5m"
    # The activator holds the first request while a pod starts: the revision timeout must
    # cover a cold start and stay within Knative's max-revision-timeout-seconds (600).
    assert p["timeout"] == 600


def test_keda_autoscaling() -> None:
    isvc = tools.one(tools.render(["ci/keda-values.yaml"]), "InferenceService")
    p = checks.predictor(isvc)
    assert isvc["metadata"]["annotations"][kserve_rules.AUTOSCALER_CLASS] == "keda"
    assert p["minReplicas"] == 1
    (metric,) = p["autoScaling"]["metrics"]
    assert metric["external"]["target"] == {"type": "Value", "value": "16"}
    assert p["autoScaling"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"deploymentMode": "RawDeployment"}, "deploymentMode"),
        ({"deploymentMode": "Serverless"}, "deploymentMode"),
        ({"model.letterbox": "diagonal"}, "letterbox"),
        ({"model.backend": "tensorrt"}, "backend"),
        ({"model.precision": "int4"}, "precision"),
        ({"model.int8MinAgreement": 1.5}, "int8MinAgreement"),
        ({"model.precision": "int8", "gpu.count": 1}, "int8 runs on the CPU only"),
        ({"model.device": "gpu"}, "device"),
        ({"model.confThreshold": 1.5}, "confThreshold"),
        ({"gpu.count": -1}, "count"),
        ({"gpu.count": 2}, "count"),
        ({"image.registry": ""}, "set image.registry"),
        ({"model.name": "cars"}, "model.name is for servingRuntime.enabled=false"),
        ({"model.storageUri": ""}, "servingRuntime.enabled needs model.storageUri"),
        (
            {"autoscaling.behavior.scaleDownStabilizationSeconds": 60},
            "needs autoscaling.standard.class=keda",
        ),
        ({"terminationGracePeriodSeconds": 30}, "terminationGracePeriodSeconds (30)"),
        (
            {"deploymentMode": "Knative", "gpu.count": 1, "autoscaling.knative.scaleToZero": True},
            "keep autoscaling.minReplicas >= 1",
        ),
        ({"autoscaling.knative.coldStartTimeoutSeconds": 900}, "coldStartTimeoutSeconds"),
        ({"canary.name": "Candidate"}, "name"),
        ({"cloud.gke.gpuSharing.strategy": "sliced"}, "strategy"),
        ({"gpu.count": 1, "model.device": "cpu"}, "device"),
        ({"autoscaling.minReplicas": 0}, "minReplicas"),
        ({"autoscaling.minReplicas": 4, "autoscaling.maxReplicas": 2}, "maxReplicas"),
        ({"autoscaling.standard.class": "keda"}, "prometheusAddress"),
        ({"autoscaling.standard.metric": "concurrency"}, "metric"),
        ({"extraEnvVars[0].name": "PYTHONPATH", "extraEnvVars[0].value": "/x"}, "extraEnvVars"),
        ({"extraArgs[0]": "model_name=x"}, "extraArgs"),
        ({"fullnameOverride": "1-yolo"}, "fullnameOverride"),
        ({"imagee.tag": "x"}, "imagee"),
        ({"serviceAccount.awsRoleArn": "my-role"}, "awsRoleArn"),
        (
            {
                "cloud.provider": "gke",
                "serviceAccount.awsRoleArn": "arn:aws:iam::111122223333:role/r",
            },
            "awsRoleArn",
        ),
        ({"cloud.provider": "azure"}, "provider"),
        ({"canary.trafficPercent": 101}, "trafficPercent"),
        ({"canary.trafficPercent": -1}, "trafficPercent"),
        ({"canary.trafficPercent": 12.5}, "trafficPercent"),
        ({"canary.weight": 10}, "weight"),
        (
            {"canary.enabled": True, "servingRuntime.enabled": False, "model.storageUri": ""},
            "spec.canary requires a stable predictor with a model",
        ),
        ({"canary.storageUri": "ftp://models/v2"}, "storageUri"),
        ({"httpRoute.enabled": True}, "httpRoute"),
    ],
)
def test_invalid_values_are_rejected(set_values: dict[str, Any], message: str) -> None:
    proc = tools.helm_template(set_values=set_values, check=False)
    assert proc.returncode != 0, f"accepted invalid values {set_values}:\n{proc.stdout}"
    assert message in proc.stderr, proc.stderr


def test_release_names_become_valid_inferenceservice_names() -> None:
    long_name = "a" * 53  # helm's maximum release name length
    objects = tools.render(release=long_name)
    isvc = tools.one(objects, "InferenceService")
    assert len(isvc["metadata"]["name"]) <= 45
    assert tools.one(objects, "ServiceAccount")["metadata"]["name"] == long_name
    assert not kserve_rules.webhook_errors(isvc)
    proc = tools.run_helm("template", "9lives", str(CHART), check=False)
    assert proc.returncode != 0 and "fullnameOverride" in proc.stderr


def test_common_labels_and_annotations() -> None:
    objects = tools.render(
        set_values={"commonLabels.team": "vision", "commonAnnotations.owner": "ml"}
    )
    for obj in objects:
        assert obj["metadata"]["labels"]["team"] == "vision"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "yolov5"
        assert obj["metadata"]["annotations"]["owner"] == "ml"


# --------------------------------------------------------------------------------------
# NOTES.txt
# --------------------------------------------------------------------------------------


def test_notes_standard_mode() -> None:
    notes = tools.helm_notes(set_values={"model.name": "cars", "servingRuntime.enabled": False})
    assert "svc/yolov5-yolov5-kserve-predictor 8080:80" in notes
    assert '"$SERVICE_URL/v2/models/cars/infer"' in notes
    assert '"$SERVICE_URL/v2/models/cars/ready"' in notes
    assert '"name":"image"' in notes and '"datatype":"BYTES"' in notes
    assert "kubectl wait --for=condition=Ready" in notes


def test_notes_knative_mode() -> None:
    notes = tools.helm_notes(["values-gke.yaml"], {"deploymentMode": "Knative"})
    assert "{.status.url}" in notes
    assert "port-forward" not in notes
    assert "1 x nvidia.com/gpu" in notes
    assert "/v2/models/yolov5-yolov5-kserve/infer" in notes
    assert "ServiceAccount models/yolov5." in notes
