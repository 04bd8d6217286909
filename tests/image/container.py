"""Build and run the repository's Dockerfile without a Docker engine: buildah and podman.

Daemonless tools from Debian, as root (what CI and the development machine allow):

* tools: `buildah podman runc debootstrap`, installed with apt-get when missing;
* base image: no registry image can be pulled here, so a Debian bookworm `minbase` with
  python3, python3-venv and python-is-python3 is bootstrapped with debootstrap and
  imported as `localhost/debian-python:bookworm` (kept in podman's storage: later runs
  reuse it) and given to the Dockerfile's BASE_IMAGE/BASE_TAG build arguments;
* build: `buildah bud --isolation chroot --network host`, with the host's CA bundle and
  pip configuration mounted into the RUN steps so pip reaches the package index;
* run: `podman --runtime runc --cgroup-manager cgroupfs run --network host`, with a
  containers.conf whose `default_ulimits = []` (the defaults cannot be set here).

Everything these write lives outside the repository, under WORK_DIR (default
/var/tmp/yolov5-kserve-image) and podman's own storage.

    python -m tests.image.container build     # build the test image, print its size
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WORK_DIR = Path(os.environ.get("YOLOV5_KSERVE_IMAGE_WORKDIR", "/var/tmp/yolov5-kserve-image"))
TOOLS = {"buildah": "buildah", "podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}
BASE_IMAGE, BASE_TAG = "localhost/debian-python", "bookworm"
BASE_PACKAGES = "python3,python3-venv,python-is-python3"
DEBIAN_MIRROR = os.environ.get("YOLOV5_KSERVE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TEST_IMAGE = "localhost/yolov5-kserve:image-test"
# download.pytorch.org is not reachable from the test machines: the test image installs
# PyPI's torch (a CUDA build), so its size is not the CPU image's (docs/deploy.md).
TEST_TORCH_INDEX = os.environ.get("YOLOV5_KSERVE_TORCH_INDEX", "https://pypi.org/simple")
# Host files that let pip inside the build reach the package index (mounted read-only).
PIP_HOST_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf", "/etc/xdg/pip")


class Unavailable(RuntimeError):
    """This machine cannot build or run containers (the test skips with this reason)."""


def _run(
    cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One build or base bootstrap at a time on this machine."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with (WORK_DIR / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tools() -> None:
    """buildah, podman, runc and debootstrap on PATH; apt-get installs them when missing
    (root on Debian/Ubuntu only)."""
    missing = [pkg for pkg, binary in TOOLS.items() if not shutil.which(binary)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(
            f"{', '.join(missing)} missing and cannot be installed here (needs root and apt-get)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        _run(["apt-get", "update", "-qq"], timeout=600, env=env)
        _run(["apt-get", "install", "-y", "-qq", *missing], timeout=900, env=env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"could not install {', '.join(missing)} with apt-get: {exc}") from exc


def check_machine() -> None:
    """Root is needed: rootless buildah/podman need subuid ranges and user namespaces."""
    if sys.platform != "linux":
        raise Unavailable(f"container builds need Linux, not {sys.platform}")
    if os.geteuid() != 0:
        raise Unavailable("buildah/podman without a daemon need root here (rootless is not set up)")


def podman_env() -> dict[str, str]:
    conf = WORK_DIR / "containers.conf"
    if not conf.is_file():
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        conf.write_text("[containers]\ndefault_ulimits = []\n")
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]
    return _run(cmd, timeout=timeout, env=podman_env(), check=check)


def ensure_base_image() -> float:
    """`localhost/debian-python:bookworm` in podman's storage; seconds spent making it."""
    with _locked("base"):
        if podman("image", "exists", f"{BASE_IMAGE}:{BASE_TAG}", check=False).returncode == 0:
            return 0.0
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=WORK_DIR, prefix="rootfs-") as rootfs:
            _run(
                ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                 "bookworm", rootfs, DEBIAN_MIRROR],
                timeout=1200,
            )  # fmt: skip
            # apt lists and caches are not needed at run time: keep the base small.
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(Path(rootfs) / leftover, ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                 "import", "-", f"{BASE_IMAGE}:{BASE_TAG}"],
                stdin=tar.stdout, capture_output=True, text=True, env=podman_env(),
                timeout=600, check=False,
            )  # fmt: skip
            assert tar.stdout is not None
            tar.stdout.close()
            if tar.wait() != 0 or imported.returncode != 0:
                raise RuntimeError(f"podman import failed: {imported.stderr[-2000:]}")
        return time.monotonic() - start


def build(
    tag: str = TEST_IMAGE, build_args: dict[str, str] | None = None, timeout: float = 3600
) -> float:
    """Build the repository's Dockerfile into `tag`; seconds spent."""
    args = {
        "BASE_IMAGE": BASE_IMAGE,
        "BASE_TAG": BASE_TAG,
        "TORCH_INDEX_URL": TEST_TORCH_INDEX,
        **(build_args or {}),
    }
    cmd = ["buildah", "bud", "--isolation", "chroot", "--network", "host",
           "-f", str(REPO_ROOT / "Dockerfile"), "-t", tag]  # fmt: skip
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    for path in PIP_HOST_FILES:
        if Path(path).exists():
            cmd += ["-v", f"{path}:{path}:ro"]
    with _locked("build"):
        start = time.monotonic()
        _run([*cmd, str(REPO_ROOT)], timeout=timeout, env=podman_env())
        return time.monotonic() - start


def image_size(tag: str = TEST_IMAGE) -> int:
    """Uncompressed size in bytes, as `podman images` reports it."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def remove_image(tag: str = TEST_IMAGE) -> None:
    """Free the disk (the base image stays for the next run)."""
    podman("rmi", "--force", tag, check=False, timeout=300)


def installed_packages(tag: str = TEST_IMAGE) -> dict[str, str]:
    """{distribution name: version} of the image's virtual environment."""
    script = (
        "import importlib.metadata as m, json;"
        "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
    )
    proc = podman("run", "--rm", "--entrypoint", "python", tag, "-c", script, timeout=300)
    return json.loads(proc.stdout)


def has_module(module: str, tag: str = TEST_IMAGE) -> bool:
    script = f"import importlib.util as u; print(u.find_spec({module!r}) is not None)"
    proc = podman("run", "--rm", "--entrypoint", "python", tag, "-c", script, timeout=300)
    return proc.stdout.strip() == "True"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Container:
    name: str

    def running(self) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return proc.stdout.strip() == "true"

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return (proc.stdout + proc.stderr)[-8000:]

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False)


def run_as_the_chart_does(model_dir: Path, args: Sequence[str], tag: str = TEST_IMAGE) -> Container:
    """Start the image the way the chart's pod runs it: uid/gid 10001, read-only root
    filesystem, no capabilities, no privilege escalation, a writable /tmp only, and the
    model (what KServe's storage initializer downloads) read-only at /mnt/models."""
    name = f"yolov5-kserve-image-test-{os.getpid()}"
    podman("rm", "--force", name, check=False)
    podman(
        "run", "--detach", "--name", name, "--network", "host",
        "--user", "10001:10001", "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", "/tmp:rw,size=2g,mode=1777", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "-v", f"{model_dir}:/mnt/models:ro",
        tag, *args,
        timeout=300,
    )  # fmt: skip
    return Container(name)


if __name__ == "__main__":
    check_machine()
    ensure_tools()
    print(f"base image: {ensure_base_image():.0f} s")
    print(f"build: {build():.0f} s")
    print(f"size: {image_size() / 1e9:.2f} GB")
