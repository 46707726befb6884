"""What the localiser, pick, policy and recorder nodes share: aligned depth, CameraInfo and masks (or, for the
mask-free policy, the colour image; for an object-token policy with crop features, masks and the image) matched
by stamp (the package's ApproximateTimeSync; message_filters is not installable everywhere) and the
camera's pose in the target frame (static extrinsic parameter, or tf2 where it is importable and asked for)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from dino_vla.config import ConfigError
from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.transforms import transform_from_pose
from dino_vla.msg import Detection, SegmentationMasks
from dino_vla.ros.conversions import depth_image, image_to_rgb
from dino_vla.ros.messages import intrinsics_from_msg, masks_from_msg, stamp_ns
from dino_vla.ros.node_base import camera_qos
from dino_vla.sync import ApproximateTimeSync
from dino_vla.types import Detections, Masks, RigidTransform


@dataclass(frozen=True)
class MaskedDepth:
    """One matched set, converted: what localisation needs."""

    header: Header             # the masks' header (stamp + camera frame)
    instruction: str
    source: str
    frame: DepthFrame
    detections: Detections
    masks: Masks
    detection_msgs: list[Detection]   # as received, to be republished with 3D poses
    rgb: np.ndarray | None = None      # (H, W, 3) uint8 the image the masks were made from (DepthMaskImageInputs)


@dataclass(frozen=True)
class CameraView:
    """One matched colour image + aligned depth, converted: what the mask-free policy takes."""

    header: Header             # the image's header (stamp + camera frame)
    rgb: np.ndarray            # (H, W, 3) uint8
    frame: DepthFrame


class DepthMaskInputs:
    """Subscribes `depth`, `camera_info` and `masks`; calls on_match(MaskedDepth) for every set whose
    stamps agree within sync_slop_s. Sets that cannot be converted are logged and skipped. `subscribe`
    replaces node.create_subscription (a managed node's input_subscription, undone on deactivate)."""

    # the streams matched with depth and CameraInfo: name, type, QoS depth (0: the camera's)
    STREAMS = (("masks", SegmentationMasks, 10),)

    def __init__(self, node: Node, params: dict[str, Any], on_match: Callable, callback_group=None,
                 subscribe: Callable | None = None):
        self.node, self.on_match = node, on_match
        self.names = ("depth", "camera_info", *(name for name, _, _ in self.STREAMS))
        self.sync = ApproximateTimeSync(self.names, slop_ns=int(round(params["sync_slop_s"] * 1e9)),
                                        queue_size=params["sync_queue_size"], on_notice=node.report_sync)
        # a short history, not depth 1: depth must still be queued when the slower masks arrive
        camera = camera_qos(params["reliability"], depth=5)
        subscribe = subscribe or node.create_subscription
        subscribe(Image, "depth", lambda m: self._add("depth", m), camera, callback_group=callback_group)
        subscribe(CameraInfo, "camera_info", lambda m: self._add("camera_info", m), camera,
                  callback_group=callback_group)
        for name, kind, depth in self.STREAMS:
            subscribe(kind, name, lambda m, name=name: self._add(name, m), depth or camera,
                      callback_group=callback_group)

    def _add(self, stream: str, msg) -> None:
        for stamp, items in self.sync.add(stream, stamp_ns(msg.header), msg):
            try:
                matched = self._convert(*(items[name] for name in self.names))
            except ValueError as err:   # ImageConversionError is one
                self.node.report(str(err), f"skipping {'/'.join(self.names[:1] + self.names[2:])} stamped "
                                 f"{stamp * 1e-9:.3f}")
                continue
            self.on_match(matched)

    @staticmethod
    def _convert(depth: Image, info: CameraInfo, masks_msg: SegmentationMasks) -> MaskedDepth:
        if masks_msg.header.frame_id != depth.header.frame_id:
            raise ValueError(f"masks are in {masks_msg.header.frame_id!r}, depth in {depth.header.frame_id!r}: depth "
                             "must be aligned to the image the masks were made from")
        frame = DepthFrame(depth_image(depth), intrinsics_from_msg(info), depth.header.frame_id)
        detections, masks = masks_from_msg(masks_msg)
        if masks.masks.shape[1:] != frame.metres.shape:
            raise ValueError(f"masks are {masks.masks.shape[2]}x{masks.masks.shape[1]}, depth is "
                             f"{frame.metres.shape[1]}x{frame.metres.shape[0]}")
        return MaskedDepth(masks_msg.header, masks_msg.instruction, masks_msg.source, frame, detections, masks,
                           list(masks_msg.detections))


class CameraExtrinsic:
    """The camera optical frame's pose in the target frame."""

    def __init__(self, node: Node, params: dict[str, Any]):
        self.node, self.target = node, params["target_frame"]
        self.static_pose = params["camera_pose_in_target"]
        self.tf_buffer = None
        if params["use_tf"]:
            try:
                from tf2_ros import Buffer, TransformListener
            except ImportError:
                raise ConfigError("use_tf is true but tf2_ros cannot be imported here; set use_tf false and "
                                  "give camera_pose_in_target") from None
            self.tf_buffer = Buffer()
            self._listener = TransformListener(self.tf_buffer, node)

    def camera_to_target(self, camera_frame: str) -> RigidTransform:
        if self.tf_buffer is None:
            return transform_from_pose(self.static_pose, self.target, camera_frame)
        from rclpy.time import Time

        try:
            t = self.tf_buffer.lookup_transform(self.target, camera_frame, Time()).transform
        except Exception as err:  # tf2's Lookup/Connectivity/Extrapolation exceptions share no useful base
            raise ValueError(f"no transform {camera_frame} -> {self.target} from tf2: {err}") from None
        q, p = t.rotation, t.translation
        return transform_from_pose((p.x, p.y, p.z, q.x, q.y, q.z, q.w), self.target, camera_frame)


class DepthImageInputs(DepthMaskInputs):
    """The same with the colour `image` in place of masks: calls on_match(CameraView)."""

    STREAMS = (("image", Image, 0),)

    @staticmethod
    def _convert(depth: Image, info: CameraInfo, image: Image) -> CameraView:
        frame = DepthFrame(depth_image(depth), intrinsics_from_msg(info), depth.header.frame_id)
        return CameraView(image.header, aligned_rgb(image, frame), frame)


class DepthMaskImageInputs(DepthMaskInputs):
    """Masks and the image they were made from with depth: calls on_match(MaskedDepth) with its rgb."""

    STREAMS = (("masks", SegmentationMasks, 10), ("image", Image, 0))

    @staticmethod
    def _convert(depth: Image, info: CameraInfo, masks_msg: SegmentationMasks, image: Image) -> MaskedDepth:
        matched = DepthMaskInputs._convert(depth, info, masks_msg)
        return replace(matched, rgb=aligned_rgb(image, matched.frame))


def aligned_rgb(image: Image, frame: DepthFrame) -> np.ndarray:
    """The image's pixels, refused (ValueError) unless depth is aligned to it: same frame, same size."""
    if image.header.frame_id != frame.frame:
        raise ValueError(f"the image is in {image.header.frame_id!r}, depth in {frame.frame!r}: depth must be "
                         "aligned to the colour image")
    rgb = image_to_rgb(image)
    if rgb.shape[:2] != frame.metres.shape:
        raise ValueError(f"the image is {rgb.shape[1]}x{rgb.shape[0]}, depth is "
                         f"{frame.metres.shape[1]}x{frame.metres.shape[0]}")
    return rgb
