"""The predictor's real argument parser, asked in a child process.

`predictor.server.cli.build_parser()` builds on KServe's parser, and importing kserve
loads its copy of the V2 gRPC protos, which cannot share a process with tritonclient's copy
(the server tests' reference client). One long-lived child answers every question.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import subprocess
import sys
from typing import Any

from .tools import REPO_ROOT

_CHILD = r"""
import contextlib, io, json, sys
from predictor.server import cli
parser = cli.build_parser()
actions = {s: a for a in parser._actions for s in a.option_strings}
for line in sys.stdin:
    request = json.loads(line)
    try:
        if request["op"] == "options":
            answer = sorted(actions)
        elif request["op"] == "choices":
            answer = list(actions[request["flag"]].choices or [])
        elif request["op"] == "constants":
            answer = {"model_name": cli.DEFAULT_MODEL_NAME, "model_dir": cli.DEFAULT_MODEL_DIR}
        else:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    ns, unknown = parser.parse_known_args(request["argv"])
                    answer = {"namespace": vars(ns), "unknown": unknown}
                except SystemExit:
                    answer = {"error": err.getvalue().strip()}
    except Exception as error:
        answer = {"error": repr(error)}
    sys.stdout.write("@@" + json.dumps(answer, default=str) + "\n")
    sys.stdout.flush()
"""


class ParseError(AssertionError):
    pass


class PredictorCli:
    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        atexit.register(self._process.kill)

    def _ask(self, **request: Any) -> Any:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        for line in self._process.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError("the predictor's parser process exited")

    def option_strings(self) -> set[str]:
        return set(self._ask(op="options"))

    def choices(self, flag: str) -> list[str]:
        return self._ask(op="choices", flag=flag)

    def constants(self) -> dict[str, str]:
        return self._ask(op="constants")

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """Parse like the server does; unparsed arguments or a rejected value fail."""
        answer = self._ask(op="parse", argv=argv)
        if "error" in answer:
            raise ParseError(f"predictor rejects its argv {argv}: {answer['error']}")
        if answer["unknown"]:
            raise ParseError(f"unparsed arguments: {answer['unknown']}")
        return argparse.Namespace(**answer["namespace"])


@functools.cache
def predictor_cli() -> PredictorCli:
    return PredictorCli()
