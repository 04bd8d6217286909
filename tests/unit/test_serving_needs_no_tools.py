"""The image ships serving only (.dockerignore leaves out predictor/bench and
predictor/training): nothing on the serving path may import them. tests/image proves it on
the built image; this checks it in seconds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_serving_modules_and_the_backend_check_run_without_bench_and_training() -> None:
    script = textwrap.dedent(
        """
        import sys

        class Absent:
            def find_spec(self, name, path=None, target=None):
                if name.startswith(("predictor.bench", "predictor.training")):
                    raise ModuleNotFoundError(f"No module named {name!r} (not in the image)")

        sys.meta_path.insert(0, Absent())
        import predictor.server.cli, predictor.server.kserve_compat  # noqa: E401
        import predictor.agreement, predictor.backends.int8, predictor.mar  # noqa: E401
        from predictor.backends import verify

        found = verify.probes((64, 64), 32, False)
        assert sum(len(probe.names) for probe in found) >= 4, found
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
