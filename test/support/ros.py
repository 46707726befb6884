"""Helpers for the tests that talk to node processes over DDS."""
from __future__ import annotations

import time
from typing import Callable

import rclpy

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node


def set_parameter(node: Node, wait: Callable[[Callable[[], bool], float], bool], target: str, name: str,
                  value: bool | str, attempts: int = 3) -> None:
    """Set one parameter of the node `target` and check it was taken.

    A new service client's response reader may not be matched by the server yet when the request arrives,
    and Fast DDS then drops the response; setting a parameter is idempotent, so the request is sent again.
    `wait(predicate, timeout_s)` is how the caller's node gets spun."""
    typed = (ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value) if isinstance(value, bool) else
             ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))
    request = SetParameters.Request(parameters=[Parameter(name=name, value=typed)])
    service = node.create_client(SetParameters, f"/{target}/set_parameters")
    assert wait(service.service_is_ready, 10), f"no parameter service on /{target}"
    for _ in range(attempts):
        future = service.call_async(request)
        if wait(future.done, 5):
            result = future.result().results[0]
            assert result.successful, f"/{target} refused {name}={value!r}: {result.reason}"
            return
    raise AssertionError(f"/{target} did not answer set_parameters {name}={value!r} in {attempts} tries")


def spin_until(node: Node, predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Spin `node` until `predicate()` holds (True) or timeout_s passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
        if predicate():
            return True
    return False
