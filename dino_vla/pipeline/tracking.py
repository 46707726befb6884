"""Detect, then track: perception at camera rate on a CPU.

Grounding DINO and SAM take seconds per frame on a CPU at real sizes, while a table-top scene changes little
between camera frames. DetectThenTrack runs the pipeline's detector (and segmenter) on some frames only: the
first, every `redetect_every` frames, on an instruction or image size change, and whenever the objects can no
longer be followed. On the frames in between neither model runs: every object's box is carried from the last
detection (the keyframe) to the new frame by pyramidal Lucas-Kanade optical flow of corners inside the object
(OpenCV), one robust similarity motion per object (RANSAC over the flow), and its mask is moved and scaled
with its box. Each result says whether it was detected or tracked, and how old the last detection is.

Flow is always measured from the keyframe itself (not frame to frame), so a static scene stays exactly as
detected and errors do not accumulate between detections."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from dino_vla.geometry.boxes import box_iou
from dino_vla.instruction import GroundingQuery, parse_instruction
from dino_vla.pipeline import PerceptionPipeline, PerceptionResult, validate_image
from dino_vla.types import DETECTED, TRACKED, Detections, Masks, Provenance

# Corners seeded per object at the keyframe: enough for RANSAC to outvote the background a box takes in.
MAX_POINTS = 60
CORNER_QUALITY = 0.01
CORNER_SPACING_PX = 3
# Flow: a 15 px window over 4 pyramid levels follows a few tens of pixels of motion from the keyframe.
FLOW_WINDOW = (15, 15)
FLOW_LEVELS = 3
FLOW_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.03)
FORWARD_BACKWARD_PX = 1.0     # a point tracked back to the keyframe must land this close to where it started
RANSAC_PX = 2.0               # points this close to the object's motion are its inliers
MIN_POINTS = 4                # fewer points agreeing on a motion: the object is lost (confidence 0)
STILL_PX = 0.01               # a box whose corners all move less than this stays where it was
# Appearance: a keyframe pixel of the object still "looks the same" where its motion puts it when no RGB channel
# differs by more than this (shading changes a little as an object moves; a vanished object's place does not).
COLOUR_TOLERANCE = 40


@dataclass(frozen=True)
class TrackingSettings:
    """When the detector runs again. Disabled: the pipeline on every frame, exactly as without tracking."""

    enabled: bool = False
    redetect_every: int = 30          # frames from one detection to the next at most (1 = every frame)
    min_confidence: float = 0.5       # an object's tracking confidence below this: detect on that frame
    mask_reuse_iou: float = 0.9       # a new detection whose boxes each overlap the segmented ones this much
                                      # keeps their masks (moved): SAM runs again when the objects changed

    def __post_init__(self):
        if self.redetect_every < 1:
            raise ValueError(f"redetect_every must be >= 1 frame, got {self.redetect_every}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 < self.mask_reuse_iou <= 1.0:
            raise ValueError(f"mask_reuse_iou must be in (0, 1], got {self.mask_reuse_iou}")

    # the node parameters (config.NODE_PARAMS) they come from; the segmenter has no confidence of its own
    PARAMETERS = ("tracking", "redetect_every", "min_tracking_confidence", "mask_reuse_iou")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrackingSettings":
        """From a node's validated parameters (detector or segmenter)."""
        return cls(params["tracking"], params["redetect_every"],
                   params.get("min_tracking_confidence", cls.min_confidence),
                   params.get("mask_reuse_iou", cls.mask_reuse_iou))


@dataclass(frozen=True)
class TrackedBoxes:
    """The keyframe's boxes in a later frame, in the keyframe's order."""

    boxes: np.ndarray          # (N, 4) float32 xyxy, clipped to the image
    confidences: np.ndarray    # (N,) float32 in [0, 1] per object (KeyframeTracker says how)

    @property
    def confidence(self) -> float:
        """The least confident object's (1 with no objects: nothing was lost)."""
        return float(self.confidences.min()) if len(self.confidences) else 1.0


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _box_pixels(box: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The integer pixel range (x0, y0, x1, y1) a box covers inside an image of `size` (height, width)."""
    h, w = size
    return (max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0),
            min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h))


def _corners(gray: np.ndarray, box: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """Up to MAX_POINTS good features to track inside the box (and the object's region, when given), (K, 2)."""
    x0, y0, x1, y1 = _box_pixels(box, gray.shape)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros((0, 2), np.float32)
    allowed = None
    if region is not None and region[y0:y1, x0:x1].any():
        # corners of a silhouette lie on its outline, half of them just outside the mask
        allowed = cv2.dilate(region[y0:y1, x0:x1].astype(np.uint8), np.ones((5, 5), np.uint8))
    found = cv2.goodFeaturesToTrack(gray[y0:y1, x0:x1], MAX_POINTS, CORNER_QUALITY, CORNER_SPACING_PX,
                                    mask=allowed)
    if found is None:
        return np.zeros((0, 2), np.float32)
    return found.reshape(-1, 2) + np.array([x0, y0], np.float32)


def _moved_box(box: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """The box around the object after a similarity motion (2x3): its centre moved, its size scaled; boxes stay
    axis aligned, so the motion's rotation only moves the centre."""
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0])
    cx, cy = motion @ centre
    scale = float(np.sqrt(abs(np.linalg.det(motion[:, :2]))))
    half_w, half_h = (box[2] - box[0]) * scale / 2, (box[3] - box[1]) * scale / 2
    moved = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    # the fit's rounding noise on a still object is no motion: its box (and mask) stay exactly as detected
    return box.copy() if np.abs(moved - box).max() < STILL_PX else moved.astype(np.float32)


class KeyframeTracker:
    """Follows the objects of one detection (the keyframe) into later frames of the same size.

    An object's confidence is the smaller of two shares: of its keyframe corners that flow agrees on (found
    forward and backward, inliers of its motion), and of its keyframe pixels that look the same where that
    motion puts them. Corners on an occluder's outline stay put when the object behind it goes; its colour
    does not stay."""

    def __init__(self, image: np.ndarray, boxes: np.ndarray, regions: np.ndarray | None = None):
        """regions: (N, H, W) bool, each object's mask when known; corners and colours are then taken on the
        object only, else anywhere in its box (the background a box takes in is outvoted by RANSAC when it
        does not move)."""
        gray = _gray(image)
        self.image_size = gray.shape
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self._gray = gray
        corners = [_corners(gray, box, None if regions is None else regions[i]) for i, box in enumerate(self.boxes)]
        self._owner = np.repeat(np.arange(len(corners)), [len(c) for c in corners])
        self._points = np.concatenate([np.zeros((0, 2), np.float32), *corners]).astype(np.float32)
        # the last motion found per object: where its corners are looked for next (objects move on smoothly)
        self._motions = np.tile(np.eye(2, 3, dtype=np.float64), (len(self.boxes), 1, 1))
        if len(self._points):
            # the best corners of a plain patch are too weak for the flow to follow even onto their own frame
            followed = self._flow(gray)[0]
            self._owner, self._points = self._owner[followed], self._points[followed]
        self._seeded = np.bincount(self._owner, minlength=len(self.boxes))
        self._looks = [self._appearance(image, box, None if regions is None else regions[i])
                       for i, box in enumerate(self.boxes)]

    def _appearance(self, image: np.ndarray, box: np.ndarray, region: np.ndarray | None):
        """The object's keyframe pixels: where they are (the box's pixel range), their colours, which are its."""
        x0, y0, x1, y1 = _box_pixels(box, self.image_size)
        crop = image[y0:y1, x0:x1].astype(np.int16)
        own = np.ones(crop.shape[:2], bool) if region is None else region[y0:y1, x0:x1]
        return (x0, y0), crop, own if own.any() else np.ones_like(own)

    def track(self, image: np.ndarray) -> TrackedBoxes:
        gray = _gray(image)
        if gray.shape != self.image_size:
            raise ValueError(f"the keyframe is {self.image_size}, this frame {gray.shape}: detect again")
        n = len(self.boxes)
        confidences = np.zeros(n, np.float32)
        boxes = self.boxes.copy()
        agree, found = self._flow(gray) if len(self._points) else (None, None)
        for i in range(n):
            if self._seeded[i] < MIN_POINTS:
                # too few corners to measure a motion (a small plain object): it counts as still while it looks
                # the same
                motion, flow_share = self._motions[i], 1.0
            else:
                mine = (self._owner == i) & agree
                if mine.sum() < MIN_POINTS:
                    continue
                motion, inliers = cv2.estimateAffinePartial2D(self._points[mine], found[mine], method=cv2.RANSAC,
                                                              ransacReprojThreshold=RANSAC_PX)
                if motion is None or inliers.sum() < MIN_POINTS:
                    continue
                flow_share = inliers.sum() / self._seeded[i]
            self._motions[i] = motion
            boxes[i] = _moved_box(self.boxes[i], motion)
            confidences[i] = min(flow_share, self._looks_the_same(image, i, motion))
        h, w = self.image_size
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        # an object that left the view is lost, whatever its flow says
        had_area = (self.boxes[:, 2:] - self.boxes[:, :2] >= 1).all(axis=1)
        confidences[had_area & ((boxes[:, 2:] - boxes[:, :2]) < 1).any(axis=1)] = 0.0
        return TrackedBoxes(boxes, confidences)

    def _flow(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each keyframe corner is in the new frame, and which of them can be trusted: found forward and
        backward, and back within FORWARD_BACKWARD_PX of where it started."""
        guess = np.einsum("kij,kj->ki", self._motions[self._owner],
                          np.hstack([self._points, np.ones((len(self._points), 1), np.float32)])).astype(np.float32)
        lk = dict(winSize=FLOW_WINDOW, maxLevel=FLOW_LEVELS, criteria=FLOW_CRITERIA,
                  flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
        found, forward, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, self._points, guess, **lk)
        back, backward, _ = cv2.calcOpticalFlowPyrLK(gray, self._gray, found, self._points.copy(), **lk)
        error = np.linalg.norm(back - self._points, axis=1)
        return (forward.ravel() == 1) & (backward.ravel() == 1) & (error < FORWARD_BACKWARD_PX), found

    def _looks_the_same(self, image: np.ndarray, i: int, motion: np.ndarray) -> float:
        """Share of object i's keyframe pixels whose colour is still there, where `motion` puts them."""
        (x0, y0), crop, own = self._looks[i]
        if not own.any():
            return 1.0   # a box without pixels: nothing that could have changed
        # sample the new frame at motion(keyframe pixel) for every pixel of the keyframe crop
        to_frame = motion @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
        seen = cv2.warpAffine(image, to_frame, (crop.shape[1], crop.shape[0]),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        same = (np.abs(seen.astype(np.int16) - crop).max(axis=2) <= COLOUR_TOLERANCE) & own
        return float(same.sum() / own.sum())


def move_masks(masks: np.ndarray, from_boxes: np.ndarray, to_boxes: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks, each moved and scaled as its box was: the axis-aligned map taking from_boxes[i]
    onto to_boxes[i] (xyxy, pixel i spanning [i, i + 1))."""
    moved = np.zeros_like(masks, dtype=bool)
    h, w = masks.shape[1:]
    for i, (src, dst) in enumerate(zip(np.asarray(from_boxes, np.float64), np.asarray(to_boxes, np.float64))):
        size, new_size = src[2:] - src[:2], dst[2:] - dst[:2]
        if np.array_equal(src, dst):
            moved[i] = masks[i]
            continue
        if (size <= 0).any() or (new_size <= 0).any():
            continue
        scale = new_size / size
        # box corners are pixel edges, warpAffine works on pixel centres (integers)
        shift = dst[:2] - src[:2] * scale + 0.5 * scale - 0.5
        matrix = np.array([[scale[0], 0.0, shift[0]], [0.0, scale[1], shift[1]]])
        moved[i] = cv2.warpAffine(masks[i].astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST) > 0
    return moved


@dataclass
class _Keyframe:
    """The last detection and what follows it."""

    query: GroundingQuery
    stamp_ns: int
    detections: Detections
    tracker: KeyframeTracker
    frames: int = 0            # frames since it


@dataclass
class _MaskKeyframe:
    """The last masks the segmenter computed, and the detection (its stamp) they now belong to."""

    detection_stamp_ns: int
    boxes: np.ndarray          # the boxes SAM was prompted with: masks are moved from these
    phrases: tuple[str, ...]
    masks: Masks
    image_size: tuple[int, int]
    frames: int = 0


class DetectThenTrack:
    """A PerceptionPipeline run on some frames, its boxes and masks carried to the frames in between.

    step() is the whole pipeline (detections, and masks when it has a segmenter; the detector node runs it with
    the detector only). masks() is the segmenter's half for detections made elsewhere (the segmenter node):
    tracked detections get the last masks moved with their boxes. Features, when the pipeline has them, are
    extracted on every frame: they are the policy's per-frame input, not something to carry over."""

    def __init__(self, pipeline: PerceptionPipeline, settings: TrackingSettings = TrackingSettings()):
        self.pipeline = pipeline
        self._settings = settings
        self._keyframe: _Keyframe | None = None
        self._mask_keyframe: _MaskKeyframe | None = None

    @property
    def settings(self) -> TrackingSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: TrackingSettings) -> None:
        self._settings = settings
        self.reset()

    def reset(self) -> None:
        """Forget the last detection and masks: the next frame is detected (a new stream, new detector settings)."""
        self._keyframe = self._mask_keyframe = None

    def step(self, image: np.ndarray, instruction: str | GroundingQuery, stamp_ns: int | None = None
             ) -> PerceptionResult:
        """One frame. stamp_ns: the frame's time (a ROS header stamp), else the monotonic clock's now."""
        query = instruction if isinstance(instruction, GroundingQuery) else parse_instruction(instruction)
        image = validate_image(image)
        stamp_ns = time.monotonic_ns() if stamp_ns is None else stamp_ns
        if not self._settings.enabled:
            return replace(self.pipeline.run(image, query), provenance=Provenance(DETECTED, 0, stamp_ns, stamp_ns))
        if self._can_track(image, query, stamp_ns):
            tracked = self._track(image, query, stamp_ns)
            if tracked is not None:
                return tracked
        provenance = Provenance(DETECTED, 0, stamp_ns, stamp_ns)
        result = self.pipeline.run(image, query, segment=lambda frame, detections: self.masks(frame, detections,
                                                                                              provenance))
        regions = None if result.masks is None else result.masks.masks
        self._keyframe = _Keyframe(query, stamp_ns, result.detections,
                                   KeyframeTracker(image, result.detections.boxes, regions))
        return replace(result, provenance=provenance)

    def _can_track(self, image: np.ndarray, query: GroundingQuery, stamp_ns: int) -> bool:
        key = self._keyframe
        return (key is not None and key.query == query and key.tracker.image_size == image.shape[:2]
                and key.frames + 1 < self._settings.redetect_every and stamp_ns >= key.stamp_ns)

    def _track(self, image: np.ndarray, query: GroundingQuery, stamp_ns: int) -> PerceptionResult | None:
        """The keyframe's objects in this frame, or None when one of them is lost (confidence too low)."""
        key = self._keyframe
        timings: dict[str, float] = {}
        start = time.perf_counter()
        tracked = key.tracker.track(image)
        timings["tracking"] = (time.perf_counter() - start) * 1e3
        if tracked.confidence < self._settings.min_confidence:
            return None
        key.frames += 1
        provenance = Provenance(TRACKED, key.frames, key.stamp_ns, stamp_ns, tracked.confidence)
        detections = replace(key.detections, boxes=tracked.boxes)
        masks = features = None
        if self.pipeline.segmenter is not None:
            start = time.perf_counter()
            masks = self.masks(image, detections, provenance)
            timings["segmenter"] = (time.perf_counter() - start) * 1e3
        if self.pipeline.feature_extractor is not None:
            start = time.perf_counter()
            features = self.pipeline.extract_features(image)
            timings["features"] = (time.perf_counter() - start) * 1e3
        timings["total"] = sum(timings.values())
        return PerceptionResult(query, detections, masks, features, timings, provenance)

    def masks(self, image: np.ndarray, detections: Detections, provenance: Provenance) -> Masks:
        """Masks of `detections`: the last masks SAM made here, moved with the boxes, for tracked ones of the
        detection they were made for (until `redetect_every` frames of it) and for any detections of the same
        objects (each box overlapping its segmented one by `mask_reuse_iou`: on a still scene SAM runs once);
        SAM on this image for any other."""
        image = validate_image(image)
        key = self._mask_keyframe
        if self._settings.enabled and key is not None and key.image_size == image.shape[:2] \
                and len(key.boxes) == len(detections):
            tracked = (provenance.kind == TRACKED and key.detection_stamp_ns == provenance.detection_stamp_ns
                       and key.frames + 1 < self._settings.redetect_every)
            # detected or tracked from a detection this node did not see (it was busy with SAM meanwhile)
            unchanged = (key.phrases == tuple(detections.phrases)
                         and bool(np.all(np.diag(box_iou(key.boxes, detections.boxes))
                                         >= self._settings.mask_reuse_iou)))
            if tracked or unchanged:
                key.frames = 0 if unchanged else key.frames + 1
                key.detection_stamp_ns = provenance.detection_stamp_ns
                # the same objects: their colours were measured when SAM ran (tens of ms per large mask)
                return replace(key.masks, masks=move_masks(key.masks.masks, key.boxes, detections.boxes))
        masks = self.pipeline.segment(image, detections)
        if self._settings.enabled:
            self._mask_keyframe = _MaskKeyframe(provenance.detection_stamp_ns, detections.boxes.copy(),
                                                tuple(detections.phrases), masks, image.shape[:2])
        return masks
