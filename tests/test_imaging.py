"""Decoding, letterboxing and box mapping against hand-computed values."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from predictor.imaging import (
    PAD_COLOUR,
    ImageDecodeError,
    Letterbox,
    apply_letterbox,
    decode_image,
    plan_letterbox,
    round_up_to_stride,
    scale_boxes_to_image,
    to_network_layout,
)
from tests.support import random_image


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


# --- letterbox planning -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_hw", "target", "mode", "expected"),
    [
        # 1280x720 into 640: ratio 0.5 -> 640x360, pad 280 = 140 + 140
        ((720, 1280), (640, 640), "square", Letterbox((640, 640), (360, 640), 140, 0)),
        # rect: 280 % 32 = 24 -> 12 + 12, input 640x384
        ((720, 1280), (640, 640), "rect", Letterbox((384, 640), (360, 640), 12, 0)),
        # portrait: the padding goes left and right
        ((1280, 720), (640, 640), "square", Letterbox((640, 640), (640, 360), 0, 140)),
        ((1280, 720), (640, 640), "rect", Letterbox((640, 384), (640, 360), 0, 12)),
        # odd padding 7 = 3.5 + 3.5 -> round(3.4) = 3 top, round(3.6) = 4 bottom
        ((57, 64), (64, 64), "square", Letterbox((64, 64), (57, 64), 3, 0)),
        ((57, 64), (64, 64), "rect", Letterbox((64, 64), (57, 64), 3, 0)),
        ((64, 57), (64, 64), "square", Letterbox((64, 64), (64, 57), 0, 3)),
        # padding 1: nothing on top, one row at the bottom
        ((63, 64), (64, 64), "square", Letterbox((64, 64), (63, 64), 0, 0)),
        # rect padding 535 % 32 = 23 -> 11 + 12
        ((105, 640), (640, 640), "rect", Letterbox((128, 640), (105, 640), 11, 0)),
        ((105, 640), (640, 640), "square", Letterbox((640, 640), (105, 640), 267, 0)),
        # small images are scaled up: ratio 6.4 -> 640x320
        ((50, 100), (640, 640), "square", Letterbox((640, 640), (320, 640), 160, 0)),
        ((50, 100), (640, 640), "rect", Letterbox((320, 640), (320, 640), 0, 0)),
        # 500x375: ratio 1.28 -> 640x480
        ((375, 500), (640, 640), "square", Letterbox((640, 640), (480, 640), 80, 0)),
        # 333x200: ratio 640/333 -> height round(384.38) = 384
        ((200, 333), (640, 640), "rect", Letterbox((384, 640), (384, 640), 0, 0)),
        # height 101 * 0.5 = 50.5 rounds half to even (Python's round, as YOLOv5): 50
        ((101, 200), (100, 100), "square", Letterbox((100, 100), (50, 100), 25, 0)),
        # a fixed non-square input (TorchScript export): 100x100 into 160x96
        ((100, 100), (96, 160), "square", Letterbox((96, 160), (96, 96), 0, 32)),
        # already the target size: nothing to do
        ((640, 640), (640, 640), "square", Letterbox((640, 640), (640, 640), 0, 0)),
        ((640, 640), (640, 640), "rect", Letterbox((640, 640), (640, 640), 0, 0)),
    ],
)
def test_plan_letterbox(image_hw, target, mode, expected) -> None:
    assert plan_letterbox(image_hw, target, 32, mode) == expected


def test_rect_mode_pads_to_the_models_stride() -> None:
    # a P6 model (stride 64): 280 % 64 = 24 -> 12 + 12
    assert plan_letterbox((720, 1280), (640, 640), 64, "rect").shape == (384, 640)
    assert plan_letterbox((700, 1280), (640, 640), 64, "rect").shape == (384, 640)
    assert plan_letterbox((600, 1280), (640, 640), 64, "rect").shape == (320, 640)


@pytest.mark.parametrize("mode", ["square", "rect"])
@pytest.mark.parametrize("hw", [(720, 1280), (1280, 720), (57, 64), (333, 200), (31, 500)])
def test_rect_and_square_shapes(hw, mode) -> None:
    plan = plan_letterbox(hw, (640, 640), 32, mode)
    if mode == "square":
        assert plan.shape == (640, 640)
    else:
        assert plan.shape[0] % 32 == 0 and plan.shape[1] % 32 == 0
        assert max(plan.shape) == 640
    assert max(plan.resized) == 640 or plan.resized == hw
    assert 0 <= plan.top <= plan.shape[0] - plan.resized[0]
    assert 0 <= plan.left <= plan.shape[1] - plan.resized[1]


# --- applying the letterbox -----------------------------------------------------------------


def test_apply_letterbox_resizes_linearly_and_pads_with_114() -> None:
    image = random_image(720, 1280)
    plan = plan_letterbox((720, 1280), (640, 640), 32, "square")
    out = apply_letterbox(image, plan)
    assert out.shape == (640, 640, 3) and out.dtype == np.uint8
    assert PAD_COLOUR == (114, 114, 114)
    assert (out[:140] == 114).all() and (out[500:] == 114).all()
    expected = cv2.resize(image, (640, 360), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out[140:500], expected)


def test_apply_letterbox_odd_padding_puts_the_extra_row_at_the_bottom() -> None:
    image = np.full((57, 64, 3), 7, np.uint8)
    out = apply_letterbox(image, plan_letterbox((57, 64), (64, 64), 32, "rect"))
    assert out.shape == (64, 64, 3)
    assert (out[:3] == 114).all() and (out[3:60] == 7).all() and (out[60:] == 114).all()


def test_apply_letterbox_keeps_an_image_of_the_right_size_untouched() -> None:
    image = random_image(64, 57)
    out = apply_letterbox(image, plan_letterbox((64, 57), (64, 64), 32, "square"))
    np.testing.assert_array_equal(out[:, 3:60], image)
    assert (out[:, :3] == 114).all() and (out[:, 60:] == 114).all()


def test_to_network_layout_is_rgb_chw_in_unit_range() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    image[:] = (10, 20, 30)  # BGR
    image[1, 2] = (255, 0, 114)
    tensor = to_network_layout(image)
    assert tensor.shape == (3, 4, 6) and tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(tensor[:, 0, 0], np.array([30, 20, 10]) / 255, rtol=1e-6)
    np.testing.assert_allclose(tensor[:, 1, 2], np.array([114, 0, 255]) / 255, rtol=1e-6)
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0


def test_to_network_layout_divides_like_yolov5() -> None:
    """YOLOv5 feeds `uint8.float() / 255`: every pixel value must give that float32 exactly
    (multiplying by 1/255 instead is off by one ulp for some values)."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.stack([values, 255 - values, values[::-1]], axis=2)  # B, G, R planes
    expected = torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    tensor = to_network_layout(image)
    assert np.array_equal(tensor.view(np.uint32), expected.numpy().view(np.uint32))
    into = np.full((3, 16, 16), np.nan, np.float32)
    assert to_network_layout(image, into) is into and np.array_equal(into, tensor)


# --- mapping boxes back -----------------------------------------------------------------------


def test_scale_boxes_square_by_hand() -> None:
    # 1280x720 in 640x640: gain 0.5, 140 rows of padding on top
    boxes = np.array([[50, 165, 150, 240]], np.float32)
    out = scale_boxes_to_image(boxes, (640, 640), (720, 1280))
    np.testing.assert_allclose(out, [[100, 50, 300, 200]])
    np.testing.assert_array_equal(boxes, [[50, 165, 150, 240]])  # input untouched


def test_scale_boxes_rect_by_hand() -> None:
    # 1280x720 in 384x640: gain 0.5, 12 rows of padding on top
    out = scale_boxes_to_image(np.array([[50, 37, 150, 112]]), (384, 640), (720, 1280))
    np.testing.assert_allclose(out, [[100, 50, 300, 200]])
    assert out.dtype == np.float32


def test_scale_boxes_clips_to_the_image() -> None:
    boxes = np.array([[-10, 100, 700, 600], [600, 630, 640, 640]], np.float32)
    out = scale_boxes_to_image(boxes, (640, 640), (720, 1280))
    np.testing.assert_allclose(out, [[0, 0, 1280, 720], [1200, 720, 1280, 720]])


def test_scale_boxes_of_nothing() -> None:
    assert scale_boxes_to_image(np.zeros((0, 4), np.float32), (640, 640), (10, 10)).shape == (0, 4)


@pytest.mark.parametrize("mode", ["square", "rect"])
@pytest.mark.parametrize("hw", [(720, 1280), (1280, 720), (200, 333), (57, 64), (375, 500)])
def test_scale_boxes_inverts_the_letterbox(hw, mode) -> None:
    height, width = hw
    plan = plan_letterbox(hw, (640, 640), 32, mode)
    sy, sx = plan.resized[0] / height, plan.resized[1] / width
    box = np.array([[0.1 * width, 0.2 * height, 0.7 * width, 0.9 * height]], np.float32)
    in_input = box * [sx, sy, sx, sy] + [plan.left, plan.top, plan.left, plan.top]
    back = scale_boxes_to_image(in_input.astype(np.float32), plan.shape, hw)
    np.testing.assert_allclose(back, box, atol=1.0)


def test_round_up_to_stride() -> None:
    assert [round_up_to_stride(s, 32) for s in (1, 32, 33, 320, 639, 640)] == [
        32,
        32,
        64,
        320,
        640,
        640,
    ]
    assert round_up_to_stride(100, 64) == 128


# --- decoding ---------------------------------------------------------------------------------


def test_decode_png_is_exact_bgr(tmp_path: Path) -> None:
    image = random_image(30, 40)
    data = encode(image, ".png")
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded, image)
    (tmp_path / "a.png").write_bytes(data)
    np.testing.assert_array_equal(decoded, cv2.imread(str(tmp_path / "a.png")))


def test_decode_jpeg_as_imread(tmp_path: Path) -> None:
    image = random_image(48, 64)
    data = encode(image, ".jpg")
    decoded = decode_image(data)
    (tmp_path / "a.jpg").write_bytes(data)
    np.testing.assert_array_equal(decoded, cv2.imread(str(tmp_path / "a.jpg")))
    assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).mean() < 12  # BGR order kept, lossy only


def test_decode_greyscale_png_becomes_bgr() -> None:
    grey = random_image(20, 30)[..., 0]
    decoded = decode_image(encode(grey, ".png"))
    assert decoded.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], grey)


def test_decode_rgba_png_drops_alpha(tmp_path: Path) -> None:
    bgra = np.dstack([random_image(20, 30), np.linspace(0, 255, 600).reshape(20, 30)])
    bgra = bgra.astype(np.uint8)
    data = encode(bgra, ".png")
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded, bgra[..., :3])
    (tmp_path / "a.png").write_bytes(data)
    np.testing.assert_array_equal(decoded, cv2.imread(str(tmp_path / "a.png")))


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_16_bit_png_becomes_8_bit(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65536, size=(12, 10, channels), dtype=np.uint16)
    image[0, 0] = 0xABCD
    image = image[..., 0] if channels == 1 else image
    data = encode(image, ".png")
    decoded = decode_image(data)
    assert decoded.shape == (12, 10, 3) and decoded.dtype == np.uint8
    (tmp_path / "a.png").write_bytes(data)
    np.testing.assert_array_equal(decoded, cv2.imread(str(tmp_path / "a.png")))
    assert (decoded[0, 0] == 0xAB).all()
    high_byte = (image >> 8).astype(np.uint8)
    expected = np.dstack([high_byte] * 3) if channels == 1 else high_byte
    np.testing.assert_array_equal(decoded, expected)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only an Orientation tag (big-endian TIFF)."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, SHORT, count, value
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + b"\0\0\0\0"
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


@pytest.mark.parametrize(
    ("orientation", "rotation"),
    [(3, cv2.ROTATE_180), (6, cv2.ROTATE_90_CLOCKWISE), (8, cv2.ROTATE_90_COUNTERCLOCKWISE)],
)
def test_decode_applies_exif_orientation(tmp_path: Path, orientation: int, rotation) -> None:
    image = np.zeros((24, 48, 3), np.uint8)  # wide, with a distinct quadrant
    image[:, :24] = (255, 0, 0)
    image[:12, 24:] = (0, 0, 255)
    plain = encode(image, ".jpg")
    tagged = with_exif_orientation(plain, orientation)
    decoded = decode_image(tagged)
    np.testing.assert_array_equal(decoded, cv2.rotate(decode_image(plain), rotation))
    (tmp_path / "a.jpg").write_bytes(tagged)
    np.testing.assert_array_equal(decoded, cv2.imread(str(tmp_path / "a.jpg")))


def test_decode_bmp() -> None:
    image = random_image(9, 13)
    np.testing.assert_array_equal(decode_image(encode(image, ".bmp")), image)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + bytes(64), bytes(range(256)) * 8],
    ids=["empty", "text", "jpeg-header-only", "garbage"],
)
def test_decode_rejects_non_images(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)
    assert issubclass(ImageDecodeError, ValueError)
