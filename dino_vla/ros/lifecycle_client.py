"""Driving managed (lifecycle) nodes from outside, as `ros2 lifecycle set` does: the local starter activates
the graph's model nodes with it, and the tests use it to step them through their states."""
from __future__ import annotations

import time
from typing import Callable

from lifecycle_msgs.msg import Transition, TransitionEvent
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}
# transition -> (the state it passes through, the state it ends in when it succeeds)
_STATES = {"configure": ("configuring", "inactive"), "activate": ("activating", "active"),
           "deactivate": ("deactivating", "inactive"), "cleanup": ("cleaningup", "unconfigured"),
           "shutdown": ("shuttingdown", "finalized")}
_SHUTDOWN_FROM = {"unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                  "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
                  "active": Transition.TRANSITION_ACTIVE_SHUTDOWN}


class LifecycleError(RuntimeError):
    """A transition was refused or failed, or the node did not answer."""


class LifecycleClient:
    """The change_state / get_state services of one managed node, called from `node` (spun here).

    Right after discovery Fast DDS may drop a service's response (the server has not matched the new
    client's response reader yet), and a transition cannot simply be asked for again. So the node's
    transition_event topic is watched too: a transition's end is known from whichever comes first."""

    def __init__(self, node: Node, executor: SingleThreadedExecutor, target: str):
        self.node, self.executor, self.target = node, executor, target.rstrip("/")
        self._change = node.create_client(ChangeState, f"{self.target}/change_state")
        self._get = node.create_client(GetState, f"{self.target}/get_state")
        self.events: list[TransitionEvent] = []
        self._events = node.create_subscription(TransitionEvent, f"{self.target}/transition_event",
                                                self.events.append, 10)

    def _call_idempotent(self, client, request, timeout_s: float, alive: Callable[[], str | None]):
        """Asked again every 2 s without an answer (the dropped-response race)."""
        deadline = time.monotonic() + timeout_s
        while not client.service_is_ready():
            self._spin(deadline, alive, f"no {client.srv_name} service")
        future, sent = client.call_async(request), time.monotonic()
        while not future.done():
            self._spin(deadline, alive, f"no answer from {client.srv_name}")
            if time.monotonic() - sent > 2.0:
                future, sent = client.call_async(request), time.monotonic()
        return future.result()

    def _spin(self, deadline: float, alive: Callable[[], str | None], what: str) -> None:
        gone = alive()
        if gone:
            raise LifecycleError(f"{self.target}: {gone}")
        if time.monotonic() > deadline:
            raise LifecycleError(f"{self.target}: {what} in time")
        self.executor.spin_once(timeout_sec=0.05)

    def state(self, timeout_s: float = 10.0, alive: Callable[[], str | None] = lambda: None) -> str:
        """The node's primary state label: unconfigured, inactive, active or finalized."""
        return self._call_idempotent(self._get, GetState.Request(), timeout_s, alive).current_state.label

    def request(self, transition: str, timeout_s: float = 10.0, alive: Callable[[], str | None] = lambda: None):
        """Ask for one of TRANSITIONS (shutdown: from whatever state the node is in) once the service is
        there; the answer's future. `alive` says why the node can no longer answer (its process ended), or
        None."""
        if transition not in TRANSITIONS:
            raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}, got {transition!r}")
        transition_id = TRANSITIONS[transition]
        if transition == "shutdown":
            transition_id = _SHUTDOWN_FROM.get(self.state(timeout_s, alive), transition_id)
        deadline = time.monotonic() + timeout_s
        while not self._change.service_is_ready():
            self._spin(deadline, alive, f"no {self._change.srv_name} service")
        self.events.clear()
        return self._change.call_async(ChangeState.Request(transition=Transition(id=transition_id)))

    def outcome(self, transition: str, answer) -> bool | None:
        """Whether the transition asked for succeeded, from its answer or the node's transition events;
        None while neither has come."""
        if answer.done():
            return answer.result().success
        passing, success = _STATES[transition]
        ended = [e for e in self.events if e.start_state.label == passing]
        return ended[-1].goal_state.label == success if ended else None

    def change(self, transition: str, timeout_s: float = 10.0, alive: Callable[[], str | None] = lambda: None
               ) -> None:
        """request(...) and wait for it to succeed (LifecycleError otherwise). Configure loads a model: give
        it time."""
        change_all([self], transition, timeout_s, alive)

    def close(self) -> None:
        self.node.destroy_client(self._change)
        self.node.destroy_client(self._get)
        self.node.destroy_subscription(self._events)


def change_all(clients: list[LifecycleClient], transition: str, timeout_s: float,
               alive: Callable[[], str | None] = lambda: None) -> None:
    """The same transition of several nodes at once (their models load side by side); LifecycleError naming
    the first that failed or did not answer within timeout_s."""
    deadline = time.monotonic() + timeout_s
    pending = [(client, client.request(transition, timeout_s, alive)) for client in clients]
    for client, answer in pending:
        while (succeeded := client.outcome(transition, answer)) is None:
            client._spin(deadline, alive, f"no answer to {transition}")
        if not succeeded:
            raise LifecycleError(f"{client.target}: {transition} failed (its log says why)")
