"""The user's calibration images for INT8: where they are, which are held back, their hash.

Images come from `--calibration_dir DIR`, else from a `calibration/` folder beside the
checkpoint (so a KServe `storageUri` can carry them with the model). Sorted by name, every
HOLD_BACK_EVERY-th image is held back from calibration for the self-check against fp32.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CALIBRATION_SUBDIR = "calibration"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
HOLD_BACK_EVERY = 4  # 25 % of the images check the quantised model, 75 % calibrate it
MIN_IMAGES = 2  # one to calibrate on, one to check with


class CalibrationError(ValueError):
    """No usable calibration images: INT8 cannot be built."""


@dataclass(frozen=True)
class CalibrationSet:
    directory: Path
    images: tuple[Path, ...]  # sorted by name
    digest: str  # sha256 over names and contents: part of the INT8 cache key

    @property
    def calibration(self) -> tuple[Path, ...]:
        return tuple(p for i, p in enumerate(self.images) if i % HOLD_BACK_EVERY != 1)

    @property
    def held_back(self) -> tuple[Path, ...]:
        return tuple(p for i, p in enumerate(self.images) if i % HOLD_BACK_EVERY == 1)


def default_calibration_dir(checkpoint: Path) -> Path:
    return checkpoint.parent / CALIBRATION_SUBDIR


def find_calibration_set(
    checkpoint: str | Path, calibration_dir: str | Path | None = None
) -> CalibrationSet:
    """The images of `calibration_dir`, or of `calibration/` beside the checkpoint."""
    checkpoint = Path(checkpoint)
    directory = Path(calibration_dir) if calibration_dir else default_calibration_dir(checkpoint)
    images = image_files(directory) if directory.is_dir() else []
    if len(images) < MIN_IMAGES:
        found = f"found {len(images)} in {directory}" if directory.is_dir() else "found none"
        raise CalibrationError(
            f"INT8 needs calibration images ({found}): pass --calibration_dir DIR, or put a "
            f"'{CALIBRATION_SUBDIR}/' folder beside {checkpoint.name}, holding at least "
            f"{MIN_IMAGES} (better 50 or more) images like those the model will serve "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    return CalibrationSet(directory, tuple(images), digest_files(directory, images))


def image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def digest_files(directory: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()
