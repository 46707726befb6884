"""Base of the three model nodes (features, detector, segmenter): managed nodes (ros/managed_node.py) whose
configure loads their pipeline stage; image conversion with clear, throttled rejections, debug images, and
(detector and segmenter) their stage wrapped for tracking."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import Image

from dino_vla.models.loading import ModelUnavailableError, set_torch_threads
from dino_vla.pipeline import PerceptionPipeline, validate_image
from dino_vla.pipeline.tracking import DetectThenTrack, TrackingSettings
from dino_vla.ros.conversions import image_to_rgb, numpy_to_image
from dino_vla.ros.managed_node import ManagedNode
from dino_vla.ros.node_base import camera_qos


class PerceptionNode(ManagedNode):
    """Base of the features, detector and segmenter nodes: one pipeline stage each."""

    STARTUP_ERRORS = (ModelUnavailableError,)
    TRACKING = False    # the node has the tracking parameters: its stage runs in a DetectThenTrack

    def __init__(self, **kwargs):
        self.camera_qos = None
        self.pipeline: PerceptionPipeline | None = None
        self.perception: DetectThenTrack | None = None
        self.frames_processed = 0
        super().__init__(**kwargs)

    def configure(self) -> None:
        set_torch_threads(self.params["torch_threads"])
        start = time.perf_counter()
        self.get_logger().info(f"loading {self.STAGE} model {self.params['model']!r} "
                               f"(device {self.params['device']}, dtype {self.params['dtype']})")
        self.pipeline = self.runtime = PerceptionPipeline.from_config({self.STAGE: self.params},
                                                                      stages=(self.STAGE,))
        self.get_logger().info(f"model loaded in {time.perf_counter() - start:.1f} s")
        if self.TRACKING:
            self.perception = DetectThenTrack(self.pipeline, TrackingSettings.from_params(self.params))
        self.camera_qos = camera_qos(self.params["reliability"])
        self.debug_publisher = self.output(Image, "~/debug_image", 1)

    def deactivate(self) -> None:
        if self.perception is not None:
            self.perception.reset()   # what it tracked is stale by the next activate

    def cleanup(self) -> None:
        self.pipeline = self.perception = None

    def apply_parameters(self, updated) -> None:
        if self.perception is not None and any(name in updated for name in TrackingSettings.PARAMETERS):
            self.perception.settings = TrackingSettings.from_params({**self.params, **updated})

    def to_rgb(self, msg: Image) -> np.ndarray | None:
        """The frame as RGB the models can take, or None (reported) when the message cannot be used (an
        encoding the conversion does not support, data shorter than step * height, an image too small for the
        models...); the node keeps serving."""
        try:
            return validate_image(image_to_rgb(msg))
        except ValueError as err:   # ImageConversionError is one
            self.report(str(err), f"skipping image stamped {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}")
            return None

    def publish_debug(self, header, draw: Callable[[], np.ndarray]) -> None:
        """Publishes ``draw()`` on ~/debug_image; it is only drawn while the parameter is on and something
        subscribes (drawing masks on every frame cost the segmenter more than tracking did)."""
        if self.params["publish_debug_image"] and self.debug_publisher.get_subscription_count() > 0:
            self.debug_publisher.publish(numpy_to_image(draw(), "rgb8", header))
