"""The Dockerfile, checked instruction by instruction without a Docker engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import tools
from .dockerfile import Dockerfile, DockerIgnore, parse

DOCKERFILE = parse(tools.DOCKERFILE)
IGNORE = DockerIgnore.load(tools.DOCKERIGNORE)
VALUES = yaml.safe_load((tools.CHART_DIR / "values.yaml").read_text())
PYPROJECT = tomllib.loads((tools.REPO_ROOT / "pyproject.toml").read_text())
ENTRYPOINT = ["python", "-m", "predictor", "--model_dir", "/mnt/models"]


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [str(tools.hadolint_binary()), "--no-color", "--format", "json", str(tools.DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], json.dumps(findings, indent=2) + proc.stderr


def test_multi_stage_slim_python_base() -> None:
    """Both stages on one base: python:3.11-slim by default, any other by BASE_IMAGE (the
    image test builds on a debootstrapped Debian, as no registry can be reached there)."""
    assert [s.name for s in DOCKERFILE.stages] == ["builder", "runtime"]
    requires = PYPROJECT["project"]["requires-python"]  # ">=3.11,<3.13"
    assert DOCKERFILE.global_args["BASE_IMAGE"] == "python"
    assert DOCKERFILE.global_args["BASE_TAG"] == "${PYTHON_VERSION}-slim"
    for stage in DOCKERFILE.stages:
        assert stage.base == "${BASE_IMAGE}:${BASE_TAG}", stage.base
        base = DOCKERFILE.resolved_base(stage)
        assert base == "python:3.11-slim", base
        assert ">=3.11" in requires
    runtime = DOCKERFILE.stage("runtime")
    assert not any("pip install" in r.value for r in runtime.all("RUN")), "runtime must not build"
    assert any(c.flags.get("from") == "builder" for c in runtime.all("COPY"))


def test_cpu_by_default_cuda_by_build_arg() -> None:
    builder = DOCKERFILE.stage("builder")
    args = builder.args()
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    (install,) = [r for r in builder.all("RUN") if "pip install" in r.value]
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in install.value
    # Wheels are cached in a build cache mount, never in a layer.
    assert install.flags["mount"] == "type=cache,target=/root/.cache/pip"
    # A local-version wheel (2.14.1+cpu) only satisfies exact pins of the public version.
    deps = PYPROJECT["project"]["dependencies"]
    for name in ("torch", "torchvision"):
        (pin,) = [d for d in deps if d.split("==")[0] == name]
        assert "==" in pin and "+" not in pin, pin


def test_non_root_runtime() -> None:
    runtime = DOCKERFILE.stage("runtime")
    (user,) = runtime.all("USER")
    uid, _, gid = user.value.partition(":")
    assert uid == gid == "10001", "numeric uid:gid so runAsNonRoot can be verified by the kubelet"
    assert int(uid) >= 10000, "a high uid cannot collide with a user of the node (CKV_K8S_40)"
    assert VALUES["podSecurityContext"]["runAsUser"] == int(uid)
    assert VALUES["containerSecurityContext"]["runAsUser"] == int(uid)
    assert runtime.instructions.index(user) > max(
        runtime.instructions.index(i) for i in runtime.all("RUN")
    ), "USER must come after every RUN"


def test_entrypoint_and_ports() -> None:
    (entrypoint,) = DOCKERFILE.stage("runtime").all("ENTRYPOINT")
    assert entrypoint.exec_form() == ENTRYPOINT
    assert not DOCKERFILE.stage("runtime").all("CMD"), "chart/manifests pass args, not a CMD"
    (expose,) = DOCKERFILE.stage("runtime").all("EXPOSE")
    assert expose.value.split() == [
        str(VALUES["containerPorts"]["http"]),
        str(VALUES["containerPorts"]["grpc"]),
    ]


def test_healthcheck_probes_liveness() -> None:
    """`docker run` health: the liveness endpoint the chart probes, on the default port,
    with Python (the slim image has no curl), after a start period for the model load."""
    runtime = DOCKERFILE.stage("runtime")
    (check,) = runtime.all("HEALTHCHECK")
    flags = check.flags
    assert set(flags) == {"interval", "timeout", "start-period", "retries"}, flags
    assert int(flags["start-period"].rstrip("s")) >= 300, "model download and warm-up"
    assert int(flags["timeout"].rstrip("s")) < int(flags["interval"].rstrip("s"))
    assert check.body.startswith("CMD [")
    command = json.loads(check.body.removeprefix("CMD").strip())
    assert command[:2] == ["python", "-c"], command
    port = VALUES["containerPorts"]["http"]
    assert f"http://127.0.0.1:{port}/v2/health/live" in command[2]
    assert VALUES["livenessProbe"]["enabled"]
    compile(command[2], "HEALTHCHECK", "exec")


def test_writable_paths_are_under_tmp() -> None:
    """With readOnlyRootFilesystem the only writable path is the chart's /tmp emptyDir."""
    runtime = DOCKERFILE.stage("runtime")
    env = " ".join(e.value for e in runtime.all("ENV"))
    for var in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME"):
        assert f"{var}=/tmp" in env, var
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    for template in ("servingruntime.yaml", "_helpers.tpl"):  # runtime and custom container
        assert "mountPath: /tmp" in (tools.CHART_DIR / "templates" / template).read_text()


def test_gke_driver_paths() -> None:
    """GKE mounts the NVIDIA driver at /usr/local/nvidia and sets no environment for it."""
    env = " ".join(e.value for e in DOCKERFILE.stage("runtime").all("ENV"))
    assert "LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64" in env
    assert "/usr/local/nvidia/bin" in env.split("PATH=", 1)[1].split()[0]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_cuda_flavour_documented_on_a_cuda_12_wheel() -> None:
    text = tools.DOCKERFILE.read_text()
    assert "--build-arg TORCH_VARIANT=cu126" in text
    workflow = yaml.safe_load((tools.REPO_ROOT / ".github" / "workflows" / "image.yml").read_text())
    (job,) = workflow["jobs"].values()
    variants = {m["flavor"]: m["torch_variant"] for m in job["strategy"]["matrix"]["include"]}
    assert variants == {"cpu": "cpu", "cuda": "cu126"}
    build = next(s for s in job["steps"] if s.get("id") == "build")
    assert "TORCH_VARIANT=${{ matrix.torch_variant }}" in build["with"]["build-args"]
    # The pushed tag is the chart's default image tag, <appVersion>-<flavor>.
    assert build["with"]["tags"].endswith(
        "${{ steps.version.outputs.version }}-${{ matrix.flavor }}"
    )


def test_weights_are_not_baked_by_default() -> None:
    runtime = DOCKERFILE.stage("runtime")
    assert runtime.args()["BAKE_MODEL"] == "false"
    for copy in runtime.all("COPY"):
        assert "model_store" not in copy.value
    (bake,) = [r for r in runtime.all("RUN") if "model_store" in r.value]
    assert bake.flags["mount"].startswith("type=bind,source=model_store,")
    assert '[ "${BAKE_MODEL}" = "true" ]' in bake.value


def _context_sources(df: Dockerfile) -> list[tuple[str, str, str]]:
    """(stage, source, destination) of every COPY/ADD and bind mount from the context."""
    out = []
    for stage in df.stages:
        for inst in stage.instructions:
            if inst.keyword in ("COPY", "ADD") and "from" not in inst.flags:
                *sources, dest = inst.body.split()
                out += [(stage.name, s, dest) for s in sources]
            mount = inst.flags.get("mount", "")
            if inst.keyword == "RUN" and "type=bind" in mount and "from=" not in mount:
                opts = dict(kv.split("=", 1) for kv in mount.split(","))
                out.append((stage.name, opts["source"], opts["target"]))
    return out


def test_build_context_holds_every_source() -> None:
    sources = _context_sources(DOCKERFILE)
    assert {s for _, s, _ in sources} >= {
        "pyproject.toml",
        "README.md",
        "predictor/",
        "model_store",
    }
    for _, source, _ in sources:
        path = tools.REPO_ROOT / source
        assert path.exists(), f"{source} does not exist"
        assert not IGNORE.excluded(source.rstrip("/")), f".dockerignore excludes {source}"
        if path.is_dir() and source != "model_store":
            assert IGNORE.context_files(tools.REPO_ROOT, source), (
                f"{source} is empty in the context"
            )


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", ".cache/tools/helm", "tests/deploy/tools.py",
     "helm/yolov5-kserve/Chart.yaml", "predictor/__pycache__/x.cpython-311.pyc", "Dockerfile",
     "docs/deploy.md", "scripts/bootstrap", "yolov5_kserve.egg-info/PKG-INFO",
     "predictor/bench/cli.py", "predictor/training/trainer.py"],
)  # fmt: skip
def test_build_context_excludes(path: str) -> None:
    assert IGNORE.excluded(path)


def test_install_step_builds_from_the_copied_files(tmp_path: Path) -> None:
    """The builder stage's `pip install .`, on exactly the files its COPYs put in /src."""
    builder = DOCKERFILE.stage("builder")
    (workdir,) = builder.all("WORKDIR")
    assert workdir.value == "/src"
    src = tmp_path / "src"
    for stage, source, dest in _context_sources(DOCKERFILE):
        if stage != "builder":
            continue
        target = src / dest
        for f in IGNORE.context_files(tools.REPO_ROOT, source):
            rel = (
                f.relative_to(tools.REPO_ROOT / source)
                if (tools.REPO_ROOT / source).is_dir()
                else Path(f.name)
            )
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
    (install,) = [r for r in builder.all("RUN") if "pip install" in r.value]
    assert install.value.split("&&")[0].rstrip().endswith(" ."), (
        "the image installs the project itself"
    )
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "-w", str(wheels), str(src)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("yolov5_kserve-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "predictor/__main__.py" in names, "`python -m predictor` (the ENTRYPOINT) needs __main__"
    assert "predictor/server/cli.py" in names
    required = {
        _req_key(line.split(":", 1)[1])
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert required == {_req_key(dep) for dep in PYPROJECT["project"]["dependencies"]}


def _req_key(spec: str) -> tuple[str, frozenset[str], str]:
    req = Requirement(spec.strip())
    return canonicalize_name(req.name), frozenset(req.extras), str(req.specifier)
