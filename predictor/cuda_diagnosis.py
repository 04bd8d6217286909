"""Why CUDA cannot be used here, in one line that a reader of a pod's log can act on.

`torch.cuda.is_available()` only says False. On a cluster the causes differ in what to fix:
a CPU build of PyTorch, a pod on a node without the driver (or, on GKE, a driver mounted at
/usr/local/nvidia/lib64 that LD_LIBRARY_PATH does not name), no GPU allocated to the
container, or a driver too old for the CUDA the wheel was built with. NVIDIA's minor-version
compatibility ("CUDA Compatibility", docs.nvidia.com/deploy/cuda-compatibility) lets a CUDA
12.x application run on any driver >= 525.60.13 and a 13.x one on >= 580.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

MINIMUM_DRIVER = {12: "525.60.13", 13: "580"}  # per CUDA major, NVIDIA's table
DRIVER_LIBRARY = "libcuda.so.1"


class DeviceError(ValueError):
    """The requested device cannot be used (the message says why and what to do)."""


@dataclass(frozen=True)
class CudaFacts:
    """What the diagnosis reads from the process and the node."""

    wheel_cuda: str | None  # torch.version.cuda: "12.6", or None for a CPU build
    driver_loads: bool  # libcuda.so.1 could be opened
    driver_cuda: tuple[int, int] | None  # the CUDA version the driver supports
    driver_version: str | None  # "535.104.05", from /proc/driver/nvidia/version
    device_count: int
    visible_devices: str | None  # NVIDIA_VISIBLE_DEVICES
    library_path: str  # LD_LIBRARY_PATH

    @classmethod
    def read(cls) -> CudaFacts:
        driver_loads, driver_cuda = _driver_cuda_version()
        return cls(
            wheel_cuda=torch.version.cuda,
            driver_loads=driver_loads,
            driver_cuda=driver_cuda,
            driver_version=_driver_version(),
            device_count=torch.cuda.device_count() if driver_loads else 0,
            visible_devices=os.environ.get("NVIDIA_VISIBLE_DEVICES"),
            library_path=os.environ.get("LD_LIBRARY_PATH", ""),
        )


def cuda_problem(requested: str, facts: CudaFacts) -> str | None:
    """Why `requested` ("cuda" or "cuda:N") cannot run here; None when it can."""
    versions = (
        f"PyTorch {torch.__version__} built for CUDA {facts.wheel_cuda}, "
        f"driver {facts.driver_version or 'unknown'}"
    )
    if facts.wheel_cuda is None:
        return (
            f"--device {requested}: this PyTorch ({torch.__version__}) is a CPU build; "
            "use the -cuda image, or --device cpu"
        )
    if not facts.driver_loads:
        return (
            f"--device {requested}: the NVIDIA driver library {DRIVER_LIBRARY} cannot be "
            f"loaded (LD_LIBRARY_PATH={facts.library_path or '(unset)'}; GKE mounts it at "
            "/usr/local/nvidia/lib64): is the pod on a GPU node, and does it request "
            "nvidia.com/gpu?"
        )
    wheel_major = int(facts.wheel_cuda.split(".")[0])
    if facts.driver_cuda is not None and facts.driver_cuda[0] < wheel_major:
        supported = ".".join(map(str, facts.driver_cuda))
        needed = MINIMUM_DRIVER.get(wheel_major, "newer")
        return (
            f"--device {requested}: the NVIDIA driver {facts.driver_version or ''} supports "
            f"CUDA {supported}, older than the CUDA {facts.wheel_cuda} this image's PyTorch "
            f"needs: upgrade the node's driver to >= {needed}, or use an image built for "
            f"CUDA {facts.driver_cuda[0]}.x ({versions})"
        )
    if facts.device_count == 0:
        return (
            f"--device {requested}: no GPU is visible to the container "
            f"(NVIDIA_VISIBLE_DEVICES={facts.visible_devices or '(unset)'}): request "
            f"nvidia.com/gpu in the pod's resources ({versions})"
        )
    index = torch.device(requested).index
    if index is not None and index >= facts.device_count:
        return (
            f"--device {requested}: {facts.device_count} GPU(s) visible, so the highest "
            f"device is cuda:{facts.device_count - 1}"
        )
    return None


def gpu_expected() -> bool:
    """Signs that the container was given a GPU (so falling back to the CPU is news)."""
    visible = os.environ.get("NVIDIA_VISIBLE_DEVICES", "")
    return Path("/dev/nvidia0").exists() or visible not in ("", "void", "none")


def _driver_cuda_version() -> tuple[bool, tuple[int, int] | None]:
    """Whether libcuda loads, and the (major, minor) CUDA version its driver supports."""
    try:
        library = ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return False, None
    version = ctypes.c_int(0)
    with contextlib.suppress(AttributeError):
        if library.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
            return True, (version.value // 1000, version.value % 1000 // 10)
    return True, None


def _driver_version() -> str | None:
    with contextlib.suppress(OSError):
        text = Path("/proc/driver/nvidia/version").read_text()
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
        if found:
            return found.group(1)
    return None
