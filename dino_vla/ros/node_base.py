"""What the package's nodes share: parameters declared from the one schema and validated on change,
camera QoS, a main() with exit codes; and for the three perception nodes model loading at start-up,
image conversion with clear rejections and debug images."""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import rclpy
import torch
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from dino_vla.config import NODE_PARAMS, ConfigError, ParamSpec, validate_params
from dino_vla.dds import DdsProfileError, require_profile_if_named
from dino_vla.models.loading import ModelUnavailableError
from dino_vla.pipeline import PerceptionPipeline
from dino_vla.ros.conversions import ImageConversionError, image_to_rgb, numpy_to_image
from dino_vla.ros.launcher import stop_with_launcher

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          tuple: ParameterType.PARAMETER_DOUBLE_ARRAY}


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    d = ParameterDescriptor(name=spec.name, type=_TYPES[type(spec.default)], description=spec.description,
                            read_only=spec.read_only)
    if spec.range is not None and isinstance(spec.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                     to_value=float(spec.range[1]), step=0.0)]
    elif spec.range is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    elif spec.pattern:
        d.additional_constraints = f"matches {spec.pattern}"
    return d


def camera_qos(reliability: str, depth: int = 1) -> QoSProfile:
    """Sensor-data style camera QoS. Depth 1 by default: inference is slower than cameras, so keep only
    the latest frame, never a queue of stale ones."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
                      else ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


class ConfiguredNode(Node):
    """A node whose parameters are declared from config.NODE_PARAMS[STAGE] (descriptions, ranges,
    read-only) and validated again on every run-time change."""

    STAGE = ""
    MULTI_THREADED = False

    def __init__(self, **kwargs):
        super().__init__(self.STAGE, **kwargs)
        self._specs = {spec.name: spec for spec in NODE_PARAMS[self.STAGE]}
        for spec in self._specs.values():
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            self.declare_parameter(spec.name, default, _descriptor(spec))
        self.params = validate_params(self.STAGE, {n: self.get_parameter(n).value for n in self._specs},
                                      f"node {self.get_name()}")
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        try:
            updated = {p.name: self._specs[p.name].validate(p.value) for p in changes if p.name in self._specs}
            self.apply_parameters(updated)
        except (ConfigError, ValueError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.params.update(updated)
        return SetParametersResult(successful=True)

    def apply_parameters(self, updated: dict[str, Any]) -> None:
        """Subclasses apply run-time changes here (raise ValueError to reject them)."""


class PerceptionNode(ConfiguredNode):
    """Base of the features, detector and segmenter nodes: one pipeline stage each."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.params["torch_threads"] > 0:
            torch.set_num_threads(self.params["torch_threads"])
        start = time.perf_counter()
        self.get_logger().info(f"loading {self.STAGE} model {self.params['model']!r} "
                               f"(device {self.params['device']}, dtype {self.params['dtype']})")
        self.pipeline = PerceptionPipeline.from_config({self.STAGE: self.params}, stages=(self.STAGE,))
        self.get_logger().info(f"model loaded in {time.perf_counter() - start:.1f} s")
        self.camera_qos = camera_qos(self.params["reliability"])
        self.debug_publisher = self.create_publisher(Image, "~/debug_image", 1)
        self.frames_processed = 0
        self._last_rejection: dict[str, float] = {}

    def to_rgb(self, msg: Image) -> np.ndarray | None:
        """The frame as RGB, or None (logged) when the message cannot be used; the node keeps serving."""
        try:
            return image_to_rgb(msg)
        except ImageConversionError as err:
            # throttled per reason, not per call site: a second kind of bad frame must still be reported
            now, reason = time.monotonic(), str(err)
            if now - self._last_rejection.get(reason, -1e9) >= 5.0:
                self._last_rejection[reason] = now
                self.get_logger().error(f"skipping image stamped {msg.header.stamp.sec}."
                                        f"{msg.header.stamp.nanosec:09d}: {reason}")
            return None

    def publish_debug(self, header, rgb: np.ndarray) -> None:
        if self.params["publish_debug_image"] and self.debug_publisher.get_subscription_count() > 0:
            self.debug_publisher.publish(numpy_to_image(rgb, "rgb8", header))


def run_node(node_cls: type[ConfiguredNode], args: list[str] | None = None) -> int:
    """Exit codes: 0 clean shutdown, 1 model or parameter error, 2 unsafe DDS configuration."""
    try:
        require_profile_if_named()
    except DdsProfileError as err:
        print(f"[{node_cls.STAGE}] FATAL: {err}", file=sys.stderr)
        return 2
    rclpy.init(args=args if args is not None else sys.argv)
    stop_with_launcher()   # after init, so that the SIGINT it may send finds rclpy's handler
    node = None
    try:
        node = node_cls()
        # a node whose callbacks wait on other callbacks (the pick action) needs more than one thread
        rclpy.spin(node, executor=MultiThreadedExecutor(num_threads=4) if node_cls.MULTI_THREADED else None)
    except (ModelUnavailableError, ConfigError) as err:
        rclpy.logging.get_logger(node_cls.STAGE).fatal(str(err))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
