"""The validators themselves: they must reject what the API server and webhooks reject."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from . import checks, kserve_rules, kserve_runtime, kube_schema, tools, validate

# ../shared/reference/kserve-crds of the checkout (or of the worktrees' parent).
SHARED_CRDS = next(
    (
        d / "shared" / "reference" / "kserve-crds"
        for d in tools.REPO_ROOT.parents
        if (d / "shared" / "reference" / "kserve-crds").is_dir()
    ),
    tools.REPO_ROOT.parent / "shared" / "reference" / "kserve-crds",
)
SHARED_CRD = SHARED_CRDS / "serving.kserve.io_inferenceservices.yaml"
# The EKS InferenceService in the custom-container form (its runtime merged in), so that
# container fields can be broken one by one.
GOOD = kserve_runtime.custom_form(
    tools.load_yaml_documents(tools.MANIFESTS_DIR / "eks" / "inferenceservice.yaml")[0],
    validate.runtimes_for([]),
)
RUNTIME = validate.cluster_runtimes()[0]


def test_stored_schema_is_the_kserve_v1beta1_crd_schema() -> None:
    stored = kube_schema.stored_crd_schema()
    assert stored["source"]["crd"] == "inferenceservices.serving.kserve.io"
    assert stored["source"]["version"] == "v1beta1"
    spec = stored["openAPIV3Schema"]["properties"]["spec"]
    predictor = spec["properties"]["predictor"]["properties"]
    assert {"containers", "minReplicas", "scaleMetric", "autoScaling"} <= set(predictor)


@pytest.mark.skipif(not SHARED_CRD.is_file(), reason="reference CRD checkout not present")
def test_stored_schema_matches_the_reference_crd() -> None:
    fresh = kube_schema.extract_from_crd(SHARED_CRD, source="reference")
    stored = kube_schema.stored_crd_schema()
    assert fresh["source"]["crd_sha256"] == stored["source"]["crd_sha256"], (
        "the KServe CRD changed: python -m tests.deploy.kube_schema " + str(SHARED_CRD)
    )
    assert json.dumps(fresh["openAPIV3Schema"], sort_keys=True) == json.dumps(
        stored["openAPIV3Schema"], sort_keys=True
    )


@pytest.mark.parametrize("kind", ["ServingRuntime", "ClusterServingRuntime"])
@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="reference CRD checkout not present")
def test_stored_runtime_schemas_match_the_reference_crds(kind: str) -> None:
    crd = SHARED_CRDS / f"serving.kserve.io_{kind.lower()}s.yaml"
    fresh = kube_schema.extract_from_crd(crd, source="reference")
    stored = kube_schema.stored_crd_schema(kind)
    assert fresh["source"]["crd_sha256"] == stored["source"]["crd_sha256"], (
        f"the KServe CRD changed: python -m tests.deploy.kube_schema {crd}"
    )
    assert fresh["openAPIV3Schema"] == stored["openAPIV3Schema"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["spec", "supportedModelFormats", 0, "priority"], 0, "less than the minimum"),
        (["spec", "supportedModelFormats", 0, "autoselect"], True, "'autoselect' was unexpected"),
        (["spec", "protocolVersions"], "v2", "is not of type 'array'"),
        (["spec", "containers", 0, "args"], "--x", "is not of type 'array'"),
        (["spec", "multimodel"], False, "'multimodel' was unexpected"),
        (["kind"], "ServingRuntime", "is not ClusterServingRuntime"),
    ],
)
def test_runtime_schema_rejects(path: list[Any], value: Any, message: str) -> None:
    assert kube_schema.crd_errors(RUNTIME, "ClusterServingRuntime") == []
    errors = kube_schema.crd_errors(_mutated(path, value, RUNTIME), "ClusterServingRuntime")
    assert any(message in e for e in errors), errors


def test_runtime_rules_reject() -> None:
    assert kserve_rules.runtime_errors(RUNTIME) == []
    no_grpc_port = _mutated(["spec", "containers", 0, "ports"], [{"name": "http1",
                            "containerPort": 8080}], RUNTIME)  # fmt: skip
    assert any("grpc-v2" in e for e in kserve_rules.runtime_errors(no_grpc_port))
    other = _mutated(["spec", "supportedModelFormats", 0, "name"], "pytorch", RUNTIME)
    assert any("yolov5" in e for e in kserve_rules.runtime_errors(other))
    with pytest.raises(AssertionError, match="does not speak"):
        kserve_runtime.select_runtime(
            {"modelFormat": {"name": "yolov5"}, "runtime": "yolov5", "protocolVersion": "v1"},
            {"yolov5": _mutated(["spec", "protocolVersions"], ["grpc-v2"], RUNTIME)},
        )


def _mutated(path: list[Any], value: Any, obj: dict[str, Any] = GOOD) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


C0 = ["spec", "predictor", "containers", 0]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["spec", "predictor", "minReplica"], 1, "'minReplica' was unexpected"),
        ([*C0, "imagePullPolicy2"], "Always", "'imagePullPolicy2' was unexpected"),
        ([*C0, "resources", "limit"], {"cpu": "1"}, "'limit' was unexpected"),
        ([*C0, "readinessProbe", "httpGet", "paths"], "/", "'paths' was unexpected"),
        (["spec", "predictor", "tolerations", 0, "operater"], "Exists", "'operater'"),
        (["spec", "predictor", "scaleMetric"], "gpu", "is not one of"),
        (["spec", "predictor", "maxReplicas"], "4", "is not of type 'integer'"),
        (["spec", "predictor", "maxReplicas"], 2**31, "int32"),
        ([*C0, "ports", 1, "containerPort"], 8080, "duplicate entry"),
        ([*C0, "resources", "limits", "memory"], "12 GB", "does not match"),
        (["spec", "predictr"], {}, "'predictr' was unexpected"),
        (["metadata", "labels", "x"], 1, "is not of type 'string'"),
        (["metadata", "annotations", "a"], 5, "is not of type 'string'"),
        (["kind"], "Service", "is not InferenceService"),
    ],
)
def test_crd_schema_rejects(path: list[Any], value: Any, message: str) -> None:
    assert kube_schema.isvc_errors(GOOD) == []
    errors = kube_schema.isvc_errors(_mutated(path, value))
    assert any(message in e for e in errors), errors


def test_pod_schema_rejects_unknown_container_fields() -> None:
    pod = kube_schema.predictor_pod(_mutated([*C0, "securityContext", "runAsNonroot"], True))
    assert any("'runAsNonroot' was unexpected" in e for e in kube_schema.core_errors(pod))


def test_service_account_schema_rejects_unknown_fields() -> None:
    (sa,) = tools.load_yaml_documents(tools.MANIFESTS_DIR / "eks" / "serviceaccount.yaml")
    assert kube_schema.core_errors(sa) == []
    sa["automountToken"] = False
    assert kube_schema.core_errors(sa)


def _annotated(**annotations: str) -> dict[str, Any]:
    out = copy.deepcopy(GOOD)
    out["metadata"]["annotations"] = annotations
    return out


def test_webhook_rules() -> None:
    assert kserve_rules.webhook_errors(GOOD) == []
    # The legacy mode name falls through to the Knative (KPA) rules, which reject cpu.
    legacy = _annotated(**{kserve_rules.DEPLOYMENT_MODE: "RawDeployment"})
    assert any("not a supported metric" in e for e in kserve_rules.webhook_errors(legacy))
    bad_class = _annotated(
        **{kserve_rules.DEPLOYMENT_MODE: "Standard", kserve_rules.AUTOSCALER_CLASS: "kpa"}
    )
    assert any("autoscaler class" in e for e in kserve_rules.webhook_errors(bad_class))
    assert kserve_rules.webhook_errors(_mutated(["metadata", "name"], "9yolo"))
    env = [{"name": "PYTHONPATH", "value": "/x"}]
    assert kserve_rules.webhook_errors(_mutated([*C0, "env"], env))
    keda = _annotated(
        **{kserve_rules.DEPLOYMENT_MODE: "Standard", kserve_rules.AUTOSCALER_CLASS: "keda"}
    )
    assert any("KEDA" in e for e in kserve_rules.webhook_errors(keda))


def test_knative_rules() -> None:
    knative = _annotated(**{kserve_rules.DEPLOYMENT_MODE: "Knative"})
    errors, flags = kserve_rules.knative_errors(knative)
    joined = "\n".join(errors)
    assert "terminationGracePeriodSeconds" in joined
    assert "lifecycle" in joined
    assert "more than one container port" in joined
    assert {"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"} <= flags
    assert "kubernetes.podspec-securitycontext" in flags
    with pytest.raises(AssertionError):
        checks.assert_admissible(knative)


@pytest.mark.parametrize("kind", sorted(kube_schema.CRD_KINDS))
def test_stored_schema_file_is_compact_json(kind: str) -> None:
    path = Path(kube_schema.schema_file(kind))
    text = path.read_text()
    assert text.count("\n") == 1 and json.loads(text)
    assert path.stat().st_size < 1_000_000
