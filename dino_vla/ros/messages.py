"""Pipeline dataclasses <-> dino_vla messages. Field meanings are documented in msg/."""
from __future__ import annotations

import numpy as np
from std_msgs.msg import Header

from dino_vla.msg import Detection, DetectionArray, DinoFeatures, SegmentationMasks
from dino_vla.ros.conversions import numpy_to_image
from dino_vla.types import Detections, Features, Masks


def _detection(header: Header, index: int, box: np.ndarray, phrase: str, score: float) -> Detection:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Detection(header=header, id=str(index), class_id=phrase, score=float(score),
                     center_x=(x0 + x1) / 2, center_y=(y0 + y1) / 2, size_x=x1 - x0, size_y=y1 - y0)


def detections_to_msg(header: Header, detections: Detections, instruction: str = "") -> DetectionArray:
    return DetectionArray(header=header, instruction=instruction, detections=[
        _detection(header, i, detections.boxes[i], detections.phrases[i], detections.scores[i])
        for i in range(len(detections))])


def detections_from_msg(msg: DetectionArray, image_size: tuple[int, int]) -> Detections:
    boxes = np.array([[d.center_x - d.size_x / 2, d.center_y - d.size_y / 2,
                       d.center_x + d.size_x / 2, d.center_y + d.size_y / 2] for d in msg.detections],
                     np.float32).reshape(-1, 4)
    return Detections(boxes, np.array([d.score for d in msg.detections], np.float32),
                      tuple(d.class_id for d in msg.detections), image_size)


def masks_to_msg(header: Header, detections_msg: DetectionArray, detections: Detections, masks: Masks
                 ) -> SegmentationMasks:
    labels = masks.label_image(detections.scores)
    encoding = "mono8" if labels.dtype == np.uint8 else "16UC1"
    return SegmentationMasks(header=header, labels=numpy_to_image(labels, encoding, header),
                             detections=list(detections_msg.detections),
                             mask_scores=masks.scores.astype(np.float32).tolist())


def features_to_msg(header: Header, features: Features) -> DinoFeatures:
    rows, cols = features.grid
    return DinoFeatures(header=header, model=features.model, dim=features.dim,
                        patch_size=features.patch_size, grid_rows=rows, grid_cols=cols,
                        input_height=features.input_size[0], input_width=features.input_size[1],
                        cls=features.cls.astype(np.float32), patch_tokens=features.patch_tokens.astype(
                            np.float32).reshape(-1))


def features_from_msg(msg: DinoFeatures) -> Features:
    tokens = np.asarray(msg.patch_tokens, np.float32).reshape(msg.grid_rows, msg.grid_cols, msg.dim)
    return Features(cls=np.asarray(msg.cls, np.float32), patch_tokens=tokens, patch_size=msg.patch_size,
                    input_size=(msg.input_height, msg.input_width), model=msg.model)
