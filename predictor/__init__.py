"""yolov5-kserve: serve YOLOv5 object detectors with KServe."""

from .checkpoint import CheckpointError, load_checkpoint
from .detector import Detections, DetectionSettings, Detector

__all__ = ["CheckpointError", "DetectionSettings", "Detections", "Detector", "load_checkpoint"]
