"""The V2/V1 contract in-process: every input form, parameter, output selection and limit.
No server and no kserve: numpy arrays and dicts in, our errors out."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from predictor.detector import Detections, DetectionSettings
from predictor.server import contract
from predictor.server.contract import Tensor
from predictor.server.errors import InvalidRequest, LimitExceeded
from predictor.server.limits import Limits
from tests.support import jpeg, png_header_only

NAMES = ["person", "car", "dog"]
DEFAULTS = DetectionSettings()


def bytes_tensor(*items: object) -> dict[str, Tensor]:
    return {"image": Tensor("BYTES", [len(items)], np.array(items, dtype=object))}


# -- input forms ------------------------------------------------------------------------


def test_raw_bytes_pass_through() -> None:
    image = jpeg()
    assert contract.images_from_v2(bytes_tensor(image, image)) == [image, image]


def test_base64_text_is_decoded() -> None:
    image = jpeg()
    text = base64.b64encode(image).decode()
    assert contract.images_from_v2(bytes_tensor(text)) == [image]


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (bytes_tensor("***"), "not valid base64"),
        (bytes_tensor(17), "expected bytes or base64 text"),
        (
            {"img": Tensor("BYTES", [1], np.array([b"x"], dtype=object))},
            "input 'image' is required",
        ),
        ({"image": Tensor("BYTES", [1, 1], np.array([[b"x"]], dtype=object))}, "shape [N]"),
        ({"image": Tensor("FP32", [1], np.zeros(1, np.float32))}, "datatype must be BYTES"),
        ({"image": Tensor("UINT8", [2, 2], np.zeros((2, 2), np.uint8))}, "[N,H,W,3]"),
        ({"image": Tensor("UINT8", [1, 2, 2, 4], np.zeros((1, 2, 2, 4), np.uint8))}, "[N,H,W,3]"),
    ],
)
def test_malformed_v2_inputs_are_invalid(tensors: dict[str, Tensor], message: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        contract.images_from_v2(tensors)
    assert message in raised.value.reason


@pytest.mark.parametrize("shape", [(5, 6, 3), (2, 5, 6, 3)])
def test_uint8_pixels_with_or_without_batch_axis(shape: tuple[int, ...]) -> None:
    pixels = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    images = contract.images_from_v2({"image": Tensor("UINT8", list(shape), pixels)})
    assert len(images) == (shape[0] if len(shape) == 4 else 1)
    assert all(image.shape == (5, 6, 3) for image in images)


@pytest.mark.parametrize(
    "instance",
    [
        lambda text: {"image": {"b64": text}},
        lambda text: {"b64": text},
        lambda text: text,
    ],
)
def test_v1_instance_forms(instance) -> None:
    image = jpeg()
    body = {"instances": [instance(base64.b64encode(image).decode())]}
    assert contract.images_from_v1(body) == [image]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": [{"image": 3}]}, "instances[0]"),
        ({"instances": [{"image": {"b64": "***"}}]}, "not valid base64"),
    ],
)
def test_malformed_v1_bodies_are_invalid(body: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        contract.images_from_v1(body)
    assert message in raised.value.reason


def test_parse_json() -> None:
    assert contract.parse_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        contract.parse_json(b'{"inputs": [')


# -- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (None, DEFAULTS),
        ({"conf_threshold": 0.5}, DetectionSettings(conf_threshold=0.5)),
        ({"conf_threshold": "0.5"}, DetectionSettings(conf_threshold=0.5)),
        ({"iou_threshold": 0.3}, DetectionSettings(iou_threshold=0.3)),
        ({"max_det": 7}, DetectionSettings(max_det=7)),
        ({"max_det": "7"}, DetectionSettings(max_det=7)),
        ({"max_det": 7.0}, DetectionSettings(max_det=7)),
        ({"agnostic_nms": True}, DetectionSettings(agnostic=True)),
        ({"agnostic_nms": "yes"}, DetectionSettings(agnostic=True)),
        ({"agnostic_nms": "0"}, DetectionSettings(agnostic=False)),
        ({"classes": "dog,person"}, DetectionSettings(classes=(2, 0))),
        ({"classes": "1"}, DetectionSettings(classes=(1,))),
        ({"classes": [0, "car"]}, DetectionSettings(classes=(0, 1))),
        ({"classes": 2}, DetectionSettings(classes=(2,))),
        ({"classes": ""}, DEFAULTS),
        ({"unrelated": "ignored"}, DEFAULTS),
    ],
)
def test_parameters_override_the_defaults(parameters, expected: DetectionSettings) -> None:
    assert contract.detection_settings(parameters, DEFAULTS, NAMES) == expected


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"conf_threshold": 1.5}, "conf_threshold must be in [0, 1]"),
        ({"conf_threshold": "NaN"}, "conf_threshold must be a number"),
        ({"conf_threshold": True}, "conf_threshold must be a number"),
        ({"iou_threshold": "abc"}, "iou_threshold must be a number"),
        ({"max_det": 0}, "max_det must be at least 1"),
        ({"max_det": 2.5}, "max_det must be an integer"),
        ({"agnostic_nms": "maybe"}, "agnostic_nms must be true or false"),
        ({"classes": "unicorn"}, "unknown class 'unicorn'"),
        ({"classes": "7"}, "id 7 is not in 0..2"),
        ({"classes": "-1"}, "id -1 is not in 0..2"),
    ],
)
def test_bad_parameters_are_invalid(parameters: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        contract.detection_settings(parameters, DEFAULTS, NAMES)
    assert message in raised.value.reason


# -- outputs ------------------------------------------------------------------------------


def test_all_outputs_by_default_binary_on_request() -> None:
    assert contract.requested_outputs(None, None) == [(name, False) for name in contract.OUTPUTS]
    assert contract.requested_outputs(None, {"binary_data_output": True}) == [
        (name, True) for name in contract.OUTPUTS
    ]


def test_a_subset_of_outputs_each_with_its_own_binary_flag() -> None:
    requested = [("boxes", True), ("labels", None)]
    assert contract.requested_outputs(requested, None) == [("boxes", True), ("labels", False)]


def test_an_unknown_output_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="unknown output 'masks'"):
        contract.requested_outputs([("masks", None)], None)


def detections(count: int, label: str = "car") -> Detections:
    return Detections(
        boxes=np.arange(count * 4, dtype=np.float32).reshape(count, 4),
        scores=np.linspace(0.9, 0.5, count, dtype=np.float32),
        class_ids=np.ones(count, np.int32),
        labels=[label] * count,
    )


def test_output_arrays_pad_to_the_longest_result() -> None:
    arrays = contract.output_arrays([detections(2), detections(0)])
    assert arrays["num_detections"].tolist() == [2, 0]
    assert arrays["boxes"].shape == (2, 2, 4) and arrays["scores"][1].tolist() == [0, 0]
    assert arrays["classes"][1].tolist() == [-1, -1]
    assert arrays["labels"].tolist() == [[b"car", b"car"], [b"", b""]]
    for name, (datatype, shape) in contract.OUTPUTS.items():
        assert arrays[name].ndim == len(shape), name
        expected = {"INT32": np.int32, "FP32": np.float32, "BYTES": object}[datatype]
        assert arrays[name].dtype == expected, name


def test_v1_response_lists_each_detection() -> None:
    [prediction] = contract.v1_response([detections(1)])["predictions"]
    assert prediction == {
        "detections": [
            {
                "box": [0.0, 1.0, 2.0, 3.0],
                "score": pytest.approx(0.9),
                "class_id": 1,
                "label": "car",
            }
        ]
    }


def test_metadata_declares_every_output() -> None:
    metadata = contract.model_metadata("m", ["1", "2"])
    assert metadata["versions"] == ["1", "2"]
    assert [o["name"] for o in metadata["outputs"]] == list(contract.OUTPUTS)
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


def test_the_largest_response_bound_covers_every_detection() -> None:
    arrays = contract.output_arrays([detections(30_000, "x" * contract.MAX_LABEL_BYTES)] * 2)
    payload = sum(a.nbytes for n, a in arrays.items() if n != "labels")
    payload += sum(4 + len(label) for label in arrays["labels"].ravel())
    assert payload <= contract.largest_response_bytes(2)


# -- limits and decoding ------------------------------------------------------------------

LIMITS = Limits(max_images=3, max_image_pixels=1_000_000, max_batch_decoded_bytes=5_000_000)


def test_images_within_the_limits_pass() -> None:
    contract.check_limits(LIMITS, [jpeg(), np.zeros((100, 100, 3), np.uint8)])


@pytest.mark.parametrize(
    ("images", "kind", "message"),
    [
        ([], InvalidRequest, "holds no images"),
        ([jpeg(32, 32)] * 4, LimitExceeded, "--max_images=3"),
        ([png_header_only(2000, 2000)], LimitExceeded, "--max_image_pixels=1000000"),
        ([np.zeros((1100, 1000, 3), np.uint8)], LimitExceeded, "1000x1100 = 1100000 pixels"),
        ([png_header_only(60000, 60000)], LimitExceeded, "decompression-bomb"),
        ([png_header_only(1000, 1000)] * 2, LimitExceeded, "--max_batch_decoded_bytes=5000000"),
        ([b""], InvalidRequest, "empty image"),
        ([b"GIF89a not really"], InvalidRequest, "not a decodable image"),
        ([jpeg()[:-200]], InvalidRequest, "truncated JPEG"),
        ([png_header_only(10, 10)[:-12]], InvalidRequest, "truncated PNG"),
    ],
)
def test_limits_and_broken_images(images: list, kind: type, message: str) -> None:
    with pytest.raises(kind) as raised:
        contract.check_limits(LIMITS, images)
    assert type(raised.value) is kind and message in raised.value.reason


def test_to_bgr_decodes_and_flips_rgb_pixels() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255  # red
    assert contract.to_bgr(0, rgb)[0, 0].tolist() == [0, 0, 255]
    encoded = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    assert contract.to_bgr(0, encoded)[0, 0].tolist() == [0, 0, 255]
    with pytest.raises(InvalidRequest, match=r"input 'image'\[2\]: empty image"):
        contract.to_bgr(2, np.zeros((0, 5, 3), np.uint8))
