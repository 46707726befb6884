"""dino_vla.sync against the real message_filters.ApproximateTimeSynchronizer (Python) on the same streams.

Where they agree (the streams a camera graph produces: features and masks stamped with their image's stamp,
or within a slop under half the frame period, arriving in any interleaving and with frames lost), both emit
the same pairs, once message_filters' late sets are left out. Where they differ, on purpose:
- a set that arrives late (its stamps older than a set already emitted): message_filters emits it, out of
  time order; sync.py refuses it, so consumers only ever see time going forward;
- stamps exactly `slop` apart: message_filters needs a spread strictly under slop, sync.py accepts it; so
  sync.py's slop 0 (equal stamps) never matches in message_filters' approximate synchroniser (the tests keep
  away from the boundary).
message_filters comes from ../shared/ros2/upstream via `make setup`; where it is missing the test is skipped.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dino_vla.sync import ApproximateTimeSync

message_filters = pytest.importorskip("message_filters", reason="message_filters is not installed in this venv "
                                      "(make setup installs it where ../shared/ros2/upstream exists)")
from rclpy.time import Time  # noqa: E402  (after the skip: rclpy comes with the same venv)

PERIOD_NS = 33_333_333    # a 30 Hz camera


def _message(stamp_ns: int):
    return SimpleNamespace(header=SimpleNamespace(stamp=Time(nanoseconds=stamp_ns).to_msg()))


def both(arrivals: list[tuple[int, int]], slop_ns: int, queue_size: int = 10) -> tuple[list, list]:
    """The (stamp of stream 0, stamp of stream 1) pairs each synchroniser emits for `arrivals`, a list of
    (stream index, stamp ns) in arrival order: sync.py's, and message_filters' less those that come after a
    newer one (the late sets sync.py refuses by design)."""
    inputs = [message_filters.SimpleFilter(), message_filters.SimpleFilter()]
    reference = message_filters.ApproximateTimeSynchronizer(inputs, queue_size, slop_ns * 1e-9)
    theirs = []
    reference.registerCallback(lambda a, b: theirs.append((Time.from_msg(a.header.stamp).nanoseconds,
                                                           Time.from_msg(b.header.stamp).nanoseconds)))
    ours_sync = ApproximateTimeSync(("a", "b"), slop_ns, queue_size)
    ours = []
    for stream, stamp in arrivals:
        inputs[stream].signalMessage(_message(stamp))
        for _, items in ours_sync.add("ab"[stream], stamp, stamp):
            ours.append((items["a"], items["b"]))
    in_order, newest = [], -1
    for pair in theirs:
        if max(pair) > newest:
            in_order.append(pair)
            newest = max(pair)
    return ours, in_order


def test_same_pairs_for_shared_stamps_with_lag_and_lost_frames():
    """Features and masks carry their image's stamp; masks arrive two frames later; some frames are lost on
    either stream."""
    arrivals = []
    for k in range(60):
        if k % 7 != 3:
            arrivals.append((0, k * PERIOD_NS))
        if k >= 2 and (k - 2) % 11 != 5:
            arrivals.append((1, (k - 2) * PERIOD_NS))
    ours, theirs = both(arrivals, slop_ns=1_000_000)
    assert ours == theirs and len(ours) > 40


@pytest.mark.parametrize("seed", range(5))
def test_same_pairs_for_jittered_stamps_in_any_interleaving(seed):
    """Stream 1 stamped within 4 ms of stream 0's frames (slop 10 ms, under half the period); each message
    arrives up to two periods after its stamp, so the two streams interleave at random."""
    rng = np.random.default_rng(seed)
    events = []
    for k in range(80):
        stamp0 = 1_000_000_000 + k * PERIOD_NS
        stamp1 = stamp0 + int(rng.integers(-4_000_000, 4_000_000))
        for stream, stamp in ((0, stamp0), (1, stamp1)):
            if rng.random() > 0.1:   # a lost message
                events.append((stamp + int(rng.integers(0, 2 * PERIOD_NS)), stream, stamp))
    arrivals = [(stream, stamp) for _, stream, stamp in sorted(events)]
    ours, theirs = both(arrivals, slop_ns=10_000_000)
    assert ours == theirs and len(ours) > 50


def test_a_late_set_is_emitted_by_message_filters_and_refused_here():
    arrivals = [(0, 0), (0, PERIOD_NS), (1, PERIOD_NS), (1, 0)]
    ours, in_order = both(arrivals, slop_ns=1_000_000)
    assert ours == in_order == [(PERIOD_NS, PERIOD_NS)]
    inputs = [message_filters.SimpleFilter(), message_filters.SimpleFilter()]
    reference = message_filters.ApproximateTimeSynchronizer(inputs, 10, 1e-3)
    emitted = []
    reference.registerCallback(lambda a, b: emitted.append(Time.from_msg(a.header.stamp).nanoseconds))
    for stream, stamp in arrivals:
        inputs[stream].signalMessage(_message(stamp))
    assert emitted == [PERIOD_NS, 0]     # time goes backwards for its consumer


def test_exact_stamps_need_a_slop_above_zero_in_message_filters():
    """sync.py's slop 0 means equal stamps; message_filters' approximate synchroniser needs a spread strictly
    under its slop, so with slop 0 it never matches (its TimeSynchronizer is the exact one)."""
    arrivals = [(0, k * PERIOD_NS) for k in range(5)] + [(1, k * PERIOD_NS) for k in range(5)]
    inputs = [message_filters.SimpleFilter(), message_filters.SimpleFilter()]
    reference = message_filters.ApproximateTimeSynchronizer(inputs, 10, 0.0)
    emitted = []
    reference.registerCallback(lambda a, b: emitted.append(a))
    for stream, stamp in arrivals:
        inputs[stream].signalMessage(_message(stamp))
    ours = ApproximateTimeSync(("a", "b"), 0, 10)
    matched = [s for stream, stamp in arrivals for s in ours.add("ab"[stream], stamp, stamp)]
    assert emitted == [] and len(matched) == 5
