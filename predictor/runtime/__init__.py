"""A YOLOv5-compatible network runtime: layer types, the detection model, builders."""

from .detection import Detect, DetectionModel, fuse_batchnorm

__all__ = ["Detect", "DetectionModel", "fuse_batchnorm"]
