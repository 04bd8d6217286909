"""Request limits, checked before any expensive work: a hostile client gets a clear 4xx
instead of exhausting the server's memory or CPU."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from .errors import InvalidRequest, LimitExceeded

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 64 * MiB  # whole HTTP body / gRPC message
    max_images: int = 64  # images per request
    max_image_pixels: int = 50_000_000  # width x height of one image
    max_batch_decoded_bytes: int = 1024 * MiB  # decoded BGR bytes of all images in a request

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def check_image_count(self, count: int) -> None:
        if count > self.max_images:
            raise LimitExceeded(
                f"{count} images in one request exceeds --max_images={self.max_images}"
            )

    def check_pixels(self, index: int, width: int, height: int) -> None:
        if width * height > self.max_image_pixels:
            raise LimitExceeded(
                f"input 'image'[{index}] is {width}x{height} = {width * height} pixels, over "
                f"--max_image_pixels={self.max_image_pixels}"
            )

    def check_batch_bytes(self, sizes: list[tuple[int, int]]) -> None:
        total = sum(w * h * 3 for w, h in sizes)
        if total > self.max_batch_decoded_bytes:
            raise LimitExceeded(
                f"the request's images decode to {total} bytes, over "
                f"--max_batch_decoded_bytes={self.max_batch_decoded_bytes}"
            )


def encoded_image_size(index: int, data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone, without decoding the pixels.

    Also rejects files that are cut short: a JPEG without its end marker or a PNG without
    its IEND chunk would otherwise decode into a partly grey image.
    """
    if not data:
        raise InvalidRequest(f"input 'image'[{index}]: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                size, kind = image.size, image.format
    except Image.DecompressionBombError:
        raise LimitExceeded(
            f"input 'image'[{index}]: the header claims a decompression-bomb-sized image"
        ) from None
    except (OSError, SyntaxError, ValueError):  # what Pillow raises for unreadable files
        raise InvalidRequest(
            f"input 'image'[{index}]: not a decodable image (JPEG, PNG, BMP, WebP or TIFF expected)"
        ) from None
    if kind == "JPEG" and b"\xff\xd9" not in data[-1024:]:
        raise InvalidRequest(f"input 'image'[{index}]: truncated JPEG (no end-of-image marker)")
    if kind == "PNG" and b"IEND" not in data[-1024:]:
        raise InvalidRequest(f"input 'image'[{index}]: truncated PNG (no IEND chunk)")
    return size
