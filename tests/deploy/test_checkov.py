"""Security posture: checkov (3.3.30) passes on the image and on every Kubernetes object.

checkov runs from its own virtual environment (tools.checkov_binary) with the repository's
`.checkov.yaml`, offline. Every check it skips is justified there in one line, and must
still be needed (it fails without the skip list), so the list cannot go stale.

checkov has no checks for KServe's InferenceService, so next to every rendered chart
configuration and every manifest directory the scan also gets the Pod that KServe creates
from each predictor spec (kube_schema.predictor_pod, with KServe's labels and the
namespace). manifests/ leave the namespace to `kubectl apply -n` (test_manifests checks
that); they are scanned as applied to the namespace "models".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from . import kube_schema, tools, validate
from .cases import CASES

NAMESPACE = "models"
CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_[0-9]+$")
SKIP_LINE = re.compile(r"^\s+-\s+(\S+)\s+#\s*(\S.*)$")
# Hardening the Pod must pass (not merely not fail): checkov skips checks whose resource
# kind it does not know, so assert that the important ones really ran.
POD_CHECKS = {
    "CKV_K8S_8": "liveness probe",
    "CKV_K8S_9": "readiness probe",
    "CKV_K8S_10": "CPU requests",
    "CKV_K8S_11": "CPU limits",
    "CKV_K8S_12": "memory requests",
    "CKV_K8S_13": "memory limits",
    "CKV_K8S_20": "no privilege escalation",
    "CKV_K8S_22": "read-only root filesystem",
    "CKV_K8S_23": "no root containers",
    "CKV_K8S_28": "no NET_RAW",
    "CKV_K8S_37": "capabilities dropped",
    "CKV_K8S_38": "no service account token",
    "CKV_K8S_40": "high UID",
}
DOCKERFILE_CHECKS = {
    "CKV_DOCKER_2": "HEALTHCHECK",
    "CKV_DOCKER_3": "non-root USER",
    "CKV_DOCKER_7": "no :latest base image",
}


def _skips() -> dict[str, str]:
    """{check id: justification} from .checkov.yaml's skip-check list."""
    out: dict[str, str] = {}
    lines = tools.CHECKOV_CONFIG.read_text().splitlines()
    start = lines.index("skip-check:")
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        match = SKIP_LINE.match(line)
        assert match, f"skip without a one-line justification: {line!r}"
        check_id, why = match.groups()
        assert check_id not in out, f"{check_id} skipped twice"
        out[check_id] = why
    return out


def _predictor_pod(isvc: dict[str, Any], namespace: str) -> dict[str, Any]:
    pod = kube_schema.predictor_pod(isvc)
    pod["metadata"].update(
        namespace=namespace,
        labels={
            "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
            "component": "predictor",
        },
    )
    return pod


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every chart configuration and manifest directory, plus their predictor Pods."""
    out = tmp_path_factory.mktemp("checkov")
    sources: dict[str, list[dict[str, Any]]] = {}
    try:
        tools.helm_binary()
    except tools.ToolUnavailable as exc:
        pytest.skip(str(exc))
    for case in CASES:
        sources[f"chart-{case.id}"] = tools.render(case.values_files, case.set_values)
    for directory in sorted({p.parent for p in tools.manifest_files()}):
        objects = []
        for path in sorted(directory.glob("*.yaml")):
            objects += tools.load_yaml_documents(path)
        for obj in objects:
            obj["metadata"]["namespace"] = NAMESPACE
        rel = directory.relative_to(tools.MANIFESTS_DIR).as_posix()
        if not tools.by_kind(objects, "InferenceService"):
            continue  # manifests/runtime: its container is scanned in every Pod that uses it
        sources[f"manifests-{rel.replace('/', '-')}"] = objects
    for name, objects in sources.items():
        runtimes = validate.runtimes_for(objects)
        pods = [
            _predictor_pod(form, isvc["metadata"]["namespace"])
            for isvc in tools.by_kind(objects, "InferenceService")
            for form in validate.predictor_forms(isvc, runtimes)
        ]
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all([*objects, *pods], sort_keys=False))
    return out


def _failed(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]


def test_skip_list_is_justified() -> None:
    config = yaml.safe_load(tools.CHECKOV_CONFIG.read_text())
    skips = _skips()
    assert config["skip-check"] == list(skips), "one `- ID  # justification` line per skip"
    assert config.get("skip-download") is True, "checkov must not call Prisma Cloud"
    for check_id, why in skips.items():
        assert CHECK_ID.match(check_id), check_id
        assert len(why.split()) >= 6, f"{check_id}: justify the skip in a sentence"
    assert not set(skips) & (set(POD_CHECKS) | set(DOCKERFILE_CHECKS)), "never skip those"
    lint = YamlLintConfig(file=str(Path(__file__).parent / "yamllint.yaml"))
    problems = list(linter.run(tools.CHECKOV_CONFIG.read_text(), lint))
    assert not problems, [f"{p.line}:{p.column} {p.desc}" for p in problems]


@pytest.mark.usefixtures("checkov")
def test_dockerfile() -> None:
    report = tools.run_checkov("--file", str(tools.DOCKERFILE), "--framework", "dockerfile")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] == 1, summary
    assert not _failed(report), "\n".join(_failed(report))
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    missing = {k: v for k, v in DOCKERFILE_CHECKS.items() if k not in passed}
    assert not missing, f"checks that did not pass: {missing}"
    assert summary["passed"] >= 100, summary


@pytest.mark.usefixtures("checkov")
def test_kubernetes_objects(scan_dir: Path) -> None:
    report = tools.run_checkov("--directory", str(scan_dir), "--framework", "kubernetes")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, summary
    assert not _failed(report), "\n".join(_failed(report))
    results = report["results"]["passed_checks"]
    scanned = {Path(c["file_path"]).stem for c in results}
    assert scanned == {p.stem for p in scan_dir.glob("*.yaml")}, "some files were not scanned"
    pods = {(c["file_path"], c["resource"]) for c in results if c["resource"].startswith("Pod.")}
    expected_pods = sum(
        len(tools.by_kind(tools.load_yaml_documents(p), "Pod")) for p in scan_dir.glob("*.yaml")
    )
    assert expected_pods >= len(CASES)
    assert len(pods) == expected_pods, f"{len(pods)} predictor Pods scanned of {expected_pods}"
    for pod in pods:
        passed = {c["check_id"] for c in results if (c["file_path"], c["resource"]) == pod}
        missing = {k: v for k, v in POD_CHECKS.items() if k not in passed}
        assert not missing, f"{pod}: checks that did not pass: {missing}"
    # (checkov has no checks for InferenceService or the runtimes: the Pods stand in.)
    assert any(c["resource"].startswith("ServiceAccount.") for c in results)


@pytest.mark.usefixtures("checkov")
def test_every_skip_is_still_needed(scan_dir: Path, tmp_path: Path) -> None:
    """Without the skip list, each skipped check fails somewhere: no stale skips."""
    bare = tmp_path / "checkov.yaml"
    bare.write_text("skip-download: true\n")
    failed: set[str] = set()
    for args in (
        ("--directory", str(scan_dir), "--framework", "kubernetes"),
        ("--file", str(tools.DOCKERFILE), "--framework", "dockerfile"),
    ):
        report = tools.run_checkov(*args, config_file=bare)
        failed |= {c["check_id"] for c in report["results"]["failed_checks"]}
    stale = set(_skips()) - failed
    assert not stale, f"skipped checks that no longer fail (remove them): {sorted(stale)}"
