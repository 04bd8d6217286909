"""manifests/: plain `kubectl apply` YAML, validated like the chart and kept equal to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from . import checks, kube_schema, tools


@dataclass(frozen=True)
class ManifestDir:
    name: str
    cloud: str | None
    storage_scheme: str
    # The chart install that must produce the same objects.
    values_files: tuple[str, ...] = ()
    set_values: dict[str, Any] = field(default_factory=dict)
    knative_flags: frozenset[str] = frozenset()


_GPU_KNATIVE_FLAGS = frozenset(
    {"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"}
)

DIRS = [
    ManifestDir("cpu", None, "https"),
    ManifestDir("cpu-knative", None, "https", ("ci/knative-scale-to-zero-values.yaml",)),
    ManifestDir("eks", "eks", "s3", ("values-eks.yaml",)),
    ManifestDir("gke", "gke", "gs", ("values-gke.yaml",)),
]
DIR_IDS = [d.name for d in DIRS]


def _objects(d: ManifestDir) -> list[dict[str, Any]]:
    objects = []
    for path in sorted((tools.MANIFESTS_DIR / d.name).glob("*.yaml")):
        objects += tools.load_yaml_documents(path)
    return objects


def test_every_manifest_directory_is_covered() -> None:
    found = {p.name for p in tools.MANIFESTS_DIR.iterdir() if p.is_dir()}
    assert found == set(DIR_IDS)
    assert not list(tools.MANIFESTS_DIR.glob("*.yaml")), "keep manifests in per-target directories"


@pytest.mark.parametrize(
    "path", tools.manifest_files(), ids=lambda p: str(p.relative_to(tools.MANIFESTS_DIR))
)
def test_yamllint(path: Path) -> None:
    config = YamlLintConfig(file=str(Path(__file__).parent / "yamllint.yaml"))
    problems = [
        f"{p.line}:{p.column} {p.desc} ({p.rule})"
        for p in linter.run(path.read_text(), config, str(path))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "path", tools.manifest_files(), ids=lambda p: str(p.relative_to(tools.MANIFESTS_DIR))
)
def test_objects_are_valid(path: Path) -> None:
    d = next(d for d in DIRS if d.name == path.parent.name)
    docs = tools.load_yaml_documents(path)
    assert docs, f"{path} is empty"
    for obj in docs:
        assert "namespace" not in obj["metadata"], "leave the namespace to `kubectl apply -n`"
        if obj["kind"] == "InferenceService":
            errors = kube_schema.isvc_errors(obj)
            assert not errors, "KServe CRD schema:\n" + "\n".join(errors)
            errors = kube_schema.core_errors(kube_schema.predictor_pod(obj))
            assert not errors, "predictor pod spec:\n" + "\n".join(errors)
            checks.assert_admissible(
                obj, d.knative_flags if d.cloud is None else _GPU_KNATIVE_FLAGS
            )
        else:
            assert obj["kind"] == "ServiceAccount", obj["kind"]
            errors = kube_schema.core_errors(obj)
            assert not errors, "\n".join(errors)


@pytest.mark.parametrize("d", DIRS, ids=DIR_IDS)
def test_deployment_properties(d: ManifestDir) -> None:
    objects = _objects(d)
    isvc = tools.one(objects, "InferenceService")
    sa = tools.one(objects, "ServiceAccount")
    checks.assert_all(isvc, "yolov5")
    checks.assert_storage(isvc, d.storage_scheme)
    if d.cloud:
        checks.assert_gpu_scheduling(isvc, d.cloud)
    else:
        checks.assert_cpu_only(isvc)
    assert checks.predictor(isvc)["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    identity = {"eks": "eks.amazonaws.com/role-arn", "gke": "iam.gke.io/gcp-service-account"}
    if d.cloud:
        assert sa["metadata"]["annotations"][identity[d.cloud]]
    if "knative" in d.name:
        assert checks.predictor(isvc)["minReplicas"] == 0, "the Knative example scales to zero"


@pytest.mark.usefixtures("helm")
@pytest.mark.parametrize("d", DIRS, ids=DIR_IDS)
def test_manifests_equal_the_chart(d: ManifestDir) -> None:
    """One source of truth: the hand-written YAML is what the chart renders for the profile."""
    rendered = tools.render(d.values_files, {"fullnameOverride": "yolov5", **d.set_values})
    for kind in ("InferenceService", "ServiceAccount"):
        ours = tools.one(_objects(d), kind)
        chart = tools.one(rendered, kind)
        assert ours["metadata"]["name"] == chart["metadata"]["name"]
        assert ours["metadata"].get("annotations") == chart["metadata"].get("annotations"), kind
        for key in set(ours) | set(chart):
            if key not in ("metadata",):
                assert ours.get(key) == chart.get(key), (
                    f"manifests/{d.name} {kind}.{key} differs from `helm template "
                    f"{' '.join(d.values_files)}`: update one of them"
                )
        chart_labels = chart["metadata"]["labels"]
        for label, value in ours["metadata"].get("labels", {}).items():
            assert chart_labels.get(label) == value, label
