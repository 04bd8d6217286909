"""Does this CPU have int8 dot-product instructions? INT8 only pays where it does.

ONNX Runtime's int8 convolutions run on AVX-512 VNNI, AVX-VNNI or AMX-INT8 when the CPU
has them; on plain AVX2 / AVX-512 they take a slower multiply-add path and INT8 may be no
faster than fp32. Linux lists the instruction sets in the `flags` line of /proc/cpuinfo.
"""

from __future__ import annotations

from pathlib import Path

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The first processor's flags, or None where /proc/cpuinfo is unreadable (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def int8_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """The int8 dot-product instruction sets present ([] none), or None when unknown."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else [f for f in INT8_FLAGS if f in flags]


def int8_warning(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """A start-up warning for INT8 serving on a CPU without VNNI/AMX; None when it has them."""
    found = int8_instructions(cpuinfo)
    if found:
        return None
    seen = "cannot be read" if found is None else "lists none of them"
    return (
        f"INT8 on a CPU without int8 dot-product instructions ({', '.join(INT8_FLAGS)}; "
        f"/proc/cpuinfo {seen}): it may be no faster than fp32 here"
    )
