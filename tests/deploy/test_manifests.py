"""manifests/: plain `kubectl apply` YAML, validated like the chart and kept equal to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from . import checks, tools, validate


@dataclass(frozen=True)
class ManifestDir:
    name: str  # path under manifests/
    cloud: str | None
    storage_scheme: str
    # The chart install that must produce the same objects.
    values_files: tuple[str, ...] = ()
    set_values: dict[str, Any] = field(default_factory=dict)
    knative_flags: frozenset[str] = frozenset()
    scale_to_zero: bool = False


_GPU_KNATIVE_FLAGS = frozenset(
    {"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"}
)

DIRS = [
    ManifestDir("cpu", None, "https"),
    ManifestDir(
        "cpu-knative", None, "https", ("ci/knative-scale-to-zero-values.yaml",),
        scale_to_zero=True,
    ),
    ManifestDir("eks", "eks", "s3", ("values-eks.yaml",)),
    ManifestDir("gke", "gke", "gs", ("values-gke.yaml",)),
    ManifestDir(
        "canary/knative", None, "https",
        ("ci/knative-scale-to-zero-values.yaml", "ci/canary-knative-values.yaml"),
        scale_to_zero=True,
    ),
    ManifestDir("canary/standard", None, "https", ("ci/canary-standard-values.yaml",)),
]  # fmt: skip
DIR_IDS = [d.name for d in DIRS]


def _objects(d: ManifestDir) -> list[dict[str, Any]]:
    objects = []
    for path in sorted((tools.MANIFESTS_DIR / d.name).glob("*.yaml")):
        objects += tools.load_yaml_documents(path)
    return objects


def _dir_of(path: Path) -> ManifestDir:
    name = path.parent.relative_to(tools.MANIFESTS_DIR).as_posix()
    return next(d for d in DIRS if d.name == name)


def test_every_manifest_directory_is_covered() -> None:
    found = {p.parent.relative_to(tools.MANIFESTS_DIR).as_posix() for p in tools.manifest_files()}
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
    d = _dir_of(path)
    docs = tools.load_yaml_documents(path)
    assert docs, f"{path} is empty"
    isvc_names = {o["metadata"]["name"] for o in tools.by_kind(_objects(d), "InferenceService")}
    for obj in docs:
        assert "namespace" not in obj["metadata"], "leave the namespace to `kubectl apply -n`"
        assert obj["kind"] in ("InferenceService", "ServiceAccount", "HTTPRoute"), obj["kind"]
    knative_flags = d.knative_flags if d.cloud is None else _GPU_KNATIVE_FLAGS
    validate.assert_valid(docs, isvc_names, knative_flags)


@pytest.mark.parametrize("d", DIRS, ids=DIR_IDS)
def test_deployment_properties(d: ManifestDir) -> None:
    objects = _objects(d)
    sa = tools.one(objects, "ServiceAccount")
    for isvc in tools.by_kind(objects, "InferenceService"):
        checks.assert_all(isvc, "yolov5")
        checks.assert_storage(isvc, d.storage_scheme)
        if d.cloud:
            checks.assert_gpu_scheduling(isvc, d.cloud)
        else:
            checks.assert_cpu_only(isvc)
        assert checks.predictor(isvc)["serviceAccountName"] == sa["metadata"]["name"]
        if d.scale_to_zero:
            assert checks.predictor(isvc)["minReplicas"] == 0, "the example scales to zero"
    assert sa["automountServiceAccountToken"] is False
    identity = {"eks": "eks.amazonaws.com/role-arn", "gke": "iam.gke.io/gcp-service-account"}
    if d.cloud:
        assert sa["metadata"]["annotations"][identity[d.cloud]]


@pytest.mark.usefixtures("helm")
@pytest.mark.parametrize("d", DIRS, ids=DIR_IDS)
def test_manifests_equal_the_chart(d: ManifestDir) -> None:
    """One source of truth: the hand-written YAML is what the chart renders for the profile."""
    rendered = tools.render(d.values_files, {"fullnameOverride": "yolov5", **d.set_values})

    def key(obj: dict[str, Any]) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    ours_by_key = {key(o): o for o in _objects(d)}
    chart_by_key = {key(o): o for o in rendered}
    assert sorted(ours_by_key) == sorted(chart_by_key), "the chart renders other objects"
    for (kind, name), chart in chart_by_key.items():
        ours = ours_by_key[kind, name]
        assert ours["metadata"].get("annotations") == chart["metadata"].get("annotations"), kind
        for field_name in set(ours) | set(chart):
            if field_name not in ("metadata",):
                assert ours.get(field_name) == chart.get(field_name), (
                    f"manifests/{d.name} {kind} {name}.{field_name} differs from `helm "
                    f"template {' '.join(d.values_files)}`: update one of them"
                )
        chart_labels = chart["metadata"]["labels"]
        for label, value in ours["metadata"].get("labels", {}).items():
            assert chart_labels.get(label) == value, label
