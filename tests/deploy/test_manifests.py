"""manifests/: plain `kubectl apply` YAML, generated from the chart and validated like it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from . import checks, kserve_rules, manifests_render, tools, validate

# Directories of InferenceServices: (cloud, storage scheme, Knative feature flags, scales to 0)
GPU_KNATIVE_FLAGS = frozenset({"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"})
PROFILES: dict[str, tuple[str | None, str, frozenset[str], bool]] = {
    "cpu": (None, "https", frozenset(), False),
    "cpu-knative": (None, "https", frozenset(), True),
    "custom-container": (None, "https", frozenset(), False),
    "eks": ("eks", "s3", GPU_KNATIVE_FLAGS, False),
    "gke": ("gke", "gs", GPU_KNATIVE_FLAGS, False),
    "canary/knative": (None, "https", frozenset(), True),
    "canary/standard": (None, "https", frozenset(), False),
}
MANIFEST_FILES = tools.manifest_files()


def _objects(name: str) -> list[dict[str, Any]]:
    objects = []
    for path in sorted((tools.MANIFESTS_DIR / name).glob("*.yaml")):
        objects += tools.load_yaml_documents(path)
    return objects


def _dir_name(path: Path) -> str:
    return path.parent.relative_to(tools.MANIFESTS_DIR).as_posix()


@pytest.mark.usefixtures("helm")
def test_manifests_are_generated_from_the_chart() -> None:
    """One source of truth: `scripts/render-manifests --check`."""
    problems = manifests_render.differences()
    assert not problems, "run scripts/render-manifests:\n" + "\n".join(problems)


def test_every_manifest_directory_is_covered() -> None:
    found = {_dir_name(p) for p in MANIFEST_FILES}
    assert found == {*PROFILES, "runtime"}
    assert {t.name for t in manifests_render.TARGETS} == found
    assert not list(tools.MANIFESTS_DIR.glob("*.yaml")), "keep manifests in per-target directories"


@pytest.mark.parametrize(
    "path", MANIFEST_FILES, ids=lambda p: str(p.relative_to(tools.MANIFESTS_DIR))
)
def test_yamllint(path: Path) -> None:
    config = YamlLintConfig(file=str(Path(__file__).parent / "yamllint.yaml"))
    problems = [
        f"{p.line}:{p.column} {p.desc} ({p.rule})"
        for p in linter.run(path.read_text(), config, str(path))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "path", MANIFEST_FILES, ids=lambda p: str(p.relative_to(tools.MANIFESTS_DIR))
)
def test_objects_are_valid(path: Path) -> None:
    docs = tools.load_yaml_documents(path)
    assert docs, f"{path} is empty"
    for obj in docs:
        assert "namespace" not in obj["metadata"], "leave the namespace to `kubectl apply -n`"
        assert not any(k.startswith("helm.sh/") for k in obj["metadata"].get("labels", {}))
    name = _dir_name(path)
    flags = PROFILES[name][2] if name in PROFILES else frozenset()
    validate.assert_valid(docs, set(flags))


def test_cluster_runtimes() -> None:
    runtimes = {o["metadata"]["name"]: o for o in _objects("runtime")}
    assert {o["kind"] for o in runtimes.values()} == {"ClusterServingRuntime"}
    standard, knative = runtimes["yolov5"]["spec"], runtimes["yolov5-knative"]["spec"]
    assert standard["protocolVersions"] == ["v2", "grpc-v2"]
    assert knative["protocolVersions"] == ["v2"], "Knative routes one port: HTTP only"
    assert [p["name"] for p in knative["containers"][0]["ports"]] == ["http1"]
    # Exactly one runtime is picked for `modelFormat: yolov5` without a runtime name.
    assert [f["autoSelect"] for f in standard["supportedModelFormats"]] == [True]
    assert [f["autoSelect"] for f in knative["supportedModelFormats"]] == [False]
    assert "--model_name={{.Name}}" in standard["containers"][0]["args"]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_deployment_properties(name: str) -> None:
    cloud, scheme, _, scale_to_zero = PROFILES[name]
    objects = _objects(name)
    sa = tools.one(objects, "ServiceAccount")
    runtimes = validate.runtimes_for(objects)
    for isvc in tools.by_kind(objects, "InferenceService"):
        checks.assert_storage(isvc, scheme)
        stable, *canaries = validate.predictor_forms(isvc, runtimes)
        checks.assert_all(stable, "yolov5")
        for pod in [stable, *canaries]:
            checks.assert_probes(pod, "yolov5")
            if cloud:
                checks.assert_gpu_scheduling(pod, cloud)
            else:
                checks.assert_cpu_only(pod)
        p = checks.predictor(isvc)
        assert p["serviceAccountName"] == sa["metadata"]["name"] == "yolov5"
        if "model" in p:
            # The runtime of manifests/runtime/ for the mode, named explicitly.
            mode = kserve_rules.deployment_mode(isvc)
            assert p["model"]["runtime"] == manifests_render.RUNTIME_FOR_MODE[mode]
        else:
            assert name == "custom-container"
        if scale_to_zero:
            assert p["minReplicas"] == 0, "the example scales to zero"
    assert sa["automountServiceAccountToken"] is False
    identity = {"eks": "eks.amazonaws.com/role-arn", "gke": "iam.gke.io/gcp-service-account"}
    if cloud:
        assert sa["metadata"]["annotations"][identity[cloud]]
        assert tools.one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
