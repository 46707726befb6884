"""Base of the nodes that hold a model (features, detector, segmenter, policy): ROS 2 managed (lifecycle)
nodes, so a robot's lifecycle manager decides when the GPU is used.

- configure: load the model, make the publishers (inactive until activate). A model that cannot load
  fails the transition with its reason logged; the node stays unconfigured and can be configured again.
- activate: subscribe (and start timers); publishers publish.
- deactivate: unsubscribe, publishers fall silent, the model moves to the CPU and its GPU memory is given
  back (the next activate moves it back, without loading again).
- cleanup: unload the model, remove the publishers. shutdown: whatever of that the state needs.

With the `autostart` parameter (default) the node configures and activates itself at start-up and a model
that cannot load ends the process with exit 1, as an unmanaged node did; the launch files and dino-vla's
starters set it false and drive the transitions themselves."""
from __future__ import annotations

import gc
from typing import Any, Callable

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.timer import Timer

from dino_vla.config import ConfigError
from dino_vla.ros.node_base import ConfiguredNode


class ManagedNode(ConfiguredNode, LifecycleNode):
    """Subclasses load in configure() (setting `self.runtime`, what holds the models: it has .to(device)
    and .device), make publishers with output(), subscribe with input_subscription() / input_timer() in
    activate(), and drop what they hold in cleanup()."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.runtime: Any = None
        self._outputs: list[Publisher] = []
        self._inputs: list = []
        self._device = None          # where the models run when active
        self._configure_error: Exception | None = None
        if self.params["autostart"]:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise self._configure_error or RuntimeError("configure failed (see the log)")
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError("activate failed (see the log)")

    # what subclasses provide
    def configure(self) -> None:
        """Load the model into self.runtime and make the publishers; raise ConfigError or one of
        STARTUP_ERRORS when the node cannot work as configured."""

    def activate(self) -> None:
        """Subscribe and start timers (input_subscription, input_timer)."""

    def deactivate(self) -> None:
        """Forget per-stream state (queues, caches) that would be stale at the next activate."""

    def cleanup(self) -> None:
        """Drop every reference to the models beyond self.runtime."""

    # helpers
    def output(self, msg_type, topic: str, qos) -> Publisher:
        publisher = self.create_lifecycle_publisher(msg_type, topic, qos)
        self._outputs.append(publisher)
        return publisher

    def input_subscription(self, msg_type, topic: str, callback: Callable, qos, **kwargs) -> None:
        self._inputs.append(self.create_subscription(msg_type, topic, callback, qos, **kwargs))

    def input_timer(self, period_s: float, callback: Callable) -> None:
        self._inputs.append(self.create_timer(period_s, callback))

    # transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.configure()
        except (ConfigError, *self.STARTUP_ERRORS) as err:
            self._configure_error = err
            self.get_logger().error(f"configure failed: {err}")
            self._unload()
            return TransitionCallbackReturn.FAILURE
        except Exception as err:   # rclpy would turn it into ERROR without a word
            self.get_logger().error(f"configure failed: {type(err).__name__}: {err}")
            self._unload()
            raise
        self._configure_error = None
        self._device = self.runtime.device
        self.get_logger().info(f"configured: model on {self._device}; activate to start")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.runtime.device != self._device:
            self.runtime.to(self._device)
        result = super().on_activate(state)   # the publishers first: activate() may publish (latched topics)
        self.activate()
        self.get_logger().info("active")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self.deactivate()
        released = self.runtime.to("cpu") if self._device.type != "cpu" else 0
        self.get_logger().info(
            f"inactive: inputs and outputs stopped; model moved from {self._device} to the CPU, "
            f"{released / 2**20:.0f} MiB of GPU memory given back" if self._device.type != "cpu"
            else "inactive: inputs and outputs stopped (model stays loaded on the CPU)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unload()
        self.get_logger().info("cleaned up: model unloaded")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if state.label == "active":
            self._stop_inputs()
            self.deactivate()
        self._unload()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._unload()
        return TransitionCallbackReturn.SUCCESS   # back to unconfigured

    def _stop_inputs(self) -> None:
        for entity in self._inputs:
            (self.destroy_timer if isinstance(entity, Timer) else self.destroy_subscription)(entity)
        self._inputs.clear()

    def _unload(self) -> None:
        for publisher in self._outputs:
            self.destroy_lifecycle_publisher(publisher)
        self._outputs.clear()
        self.cleanup()
        had_gpu = self._device is not None and self._device.type == "cuda"
        self.runtime, self._device = None, None
        gc.collect()
        if had_gpu:
            import torch

            torch.cuda.empty_cache()
