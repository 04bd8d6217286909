"""A GPU pod that cannot use CUDA says why, in terms of what to fix on the cluster."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from predictor.cuda_diagnosis import CudaFacts, cuda_problem
from predictor.detector import DeviceError, resolve_device

REPO = Path(__file__).resolve().parents[2]
WORKING = CudaFacts(
    wheel_cuda="12.6",
    driver_loads=True,
    driver_cuda=(12, 4),
    driver_version="550.54.15",
    device_count=1,
    visible_devices="GPU-1234",
    library_path="/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
)


def test_a_working_gpu_has_no_problem() -> None:
    assert cuda_problem("cuda", WORKING) is None
    assert cuda_problem("cuda:0", WORKING) is None


@pytest.mark.parametrize(
    ("change", "device", "expected"),
    [
        ({"wheel_cuda": None}, "cuda", "CPU build; use the -cuda image, or --device cpu"),
        (
            {"driver_loads": False, "driver_cuda": None, "library_path": ""},
            "cuda",
            "libcuda.so.1 cannot be loaded (LD_LIBRARY_PATH=(unset); GKE mounts it at "
            "/usr/local/nvidia/lib64)",
        ),
        (
            {"driver_cuda": (11, 8), "driver_version": "520.61.05"},
            "cuda",
            "driver 520.61.05 supports CUDA 11.8, older than the CUDA 12.6 this image's "
            "PyTorch needs: upgrade the node's driver to >= 525.60.13",
        ),
        (
            {"wheel_cuda": "13.0", "driver_cuda": (12, 4)},
            "cuda",
            "upgrade the node's driver to >= 580, or use an image built for CUDA 12.x",
        ),
        (
            {"device_count": 0, "visible_devices": "void"},
            "cuda",
            "no GPU is visible to the container (NVIDIA_VISIBLE_DEVICES=void): request "
            "nvidia.com/gpu",
        ),
        ({}, "cuda:1", "1 GPU(s) visible, so the highest device is cuda:0"),
    ],
)
def test_each_cause_is_named_with_its_fix(change: dict, device: str, expected: str) -> None:
    problem = cuda_problem(device, dataclasses.replace(WORKING, **change))
    assert problem is not None
    assert problem.startswith(f"--device {device}: ")
    assert expected in problem


def test_a_newer_driver_minor_is_fine() -> None:
    # Minor-version compatibility: a 12.2 driver runs a 12.6 wheel.
    assert cuda_problem("cuda", dataclasses.replace(WORKING, driver_cuda=(12, 2))) is None


def test_facts_are_read_from_this_machine() -> None:
    facts = CudaFacts.read()
    assert facts.wheel_cuda == torch.version.cuda
    if not facts.driver_loads:
        assert facts.device_count == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA works here")
def test_unusable_cuda_is_a_device_error_saying_why() -> None:
    with pytest.raises(DeviceError, match=r"^--device cuda: ") as caught:
        resolve_device("cuda")
    assert caught.value.args[0] == cuda_problem("cuda", CudaFacts.read())


def test_an_unknown_device_name_is_refused() -> None:
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA works here")
def test_the_server_exits_2_with_the_reason_and_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "predictor", "--model_dir", "model_store", "--device", "cuda"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "error: --device cuda: " in done.stderr
    assert "Traceback" not in done.stderr
