"""Just enough of Docker's Dockerfile and .dockerignore semantics to test them offline."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    @property
    def flags(self) -> dict[str, str]:
        """Leading `--name=value` flags (COPY --from=..., RUN --mount=...)."""
        out: dict[str, str] = {}
        for token in shlex.split(self.value):
            if not token.startswith("--"):
                break
            name, _, value = token[2:].partition("=")
            out[name] = value
        return out

    @property
    def body(self) -> str:
        """The value without leading flags."""
        rest = self.value.lstrip()
        while rest.startswith("--"):
            rest = rest.split(None, 1)[1] if " " in rest else ""
        return rest

    def exec_form(self) -> list[str] | None:
        try:
            parsed = json.loads(self.body)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def args(self) -> dict[str, str]:
        out = {}
        for inst in self.all("ARG"):
            name, _, default = inst.value.partition("=")
            out[name.strip()] = default.strip().strip('"')
        return out


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def resolved_base(self, stage: Stage) -> str:
        """FROM with the global ARG defaults substituted (an ARG may name another)."""
        base = stage.base
        for _ in range(len(self.global_args) + 1):
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: self.global_args.get(m.group(1) or m.group(2), m.group(0)),
                base,
            )
        return base


def parse(path: Path) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append((start, buffer + line))
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, value = text.partition(" ")
        inst = Instruction(keyword.upper(), value.strip(), number)
        if inst.keyword == "FROM":
            parts = inst.body.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert inst.keyword == "ARG", f"line {number}: only ARG may precede FROM"
            name, _, default = inst.value.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(inst)
    return Dockerfile(global_args, stages)


# --------------------------------------------------------------------------------------
# .dockerignore (moby/patternmatcher: last match wins, a match on a parent dir counts)
# --------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end] + "]"
            i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + r"\Z")


@dataclass
class DockerIgnore:
    rules: list[tuple[re.Pattern[str], bool]]  # (regex, is_exception)

    @classmethod
    def load(cls, path: Path) -> DockerIgnore:
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = line[1:].strip() if exception else line
            pattern = re.sub(r"/+", "/", pattern).strip("/") or "."
            rules.append((_pattern_regex(pattern), exception))
        return cls(rules)

    def excluded(self, relpath: str) -> bool:
        parts = relpath.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for regex, exception in self.rules:
            if any(regex.match(c) for c in candidates):
                excluded = not exception
        return excluded

    def context_files(self, root: Path, source: str) -> list[Path]:
        """Files of `source` (file or directory, relative to root) sent to the builder."""
        base = root / source
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        return [f for f in files if not self.excluded(f.relative_to(root).as_posix())]
