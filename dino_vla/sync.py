"""Approximate-time matching of several message streams by stamp, without ROS (message_filters is not
available here). rclpy callbacks feed it with stamps converted to integer nanoseconds.

Semantics, simpler than message_filters' ApproximateTimeSynchronizer:
- a set is one item per stream, all stamps within `slop_ns` of each other (slop 0: exact stamps);
- a set is emitted as soon as its last member arrives, choosing among the sets that the arrival completes
  the one with the smallest spread of stamps (ties: the oldest). It does not wait for a tighter set that
  might complete later, so keep slop under half the fastest stream's period;
- a set's stamp is its newest member's; once a set is emitted, every queued item at or before that stamp
  is dropped, and later arrivals at or before it are refused as late: sets come out in time order, never
  overlapping, each item at most once;
- each stream queues at most `queue_size` items, dropping its oldest;
- an item stamped exactly as its stream's newest is a duplicate (a driver that repeats a stamp): refused, the
  first one kept;
- an item more than `jump_back_ns` behind its stream's newest means the clock jumped back (a bag replay
  looping, a simulator reset under /clock, a camera whose clock was set back): everything queued is dropped
  and matching restarts from that item. Without this every later set would be refused as late until time
  passed the old stamps. Smaller steps back are out-of-order arrivals (refused when late, as above).
`on_notice(kind, stream, sentence)`, when given, is told of every refusal and restart: kind is "late",
"duplicate" or "jump_back", the sentence names the stamps, so a node can say why a set never came.
"""
from __future__ import annotations

import bisect
import threading
from typing import Any, Callable, Sequence

JUMP_BACK_NS = 1_000_000_000


class ApproximateTimeSync:
    def __init__(self, streams: Sequence[str], slop_ns: int, queue_size: int = 10, jump_back_ns: int = JUMP_BACK_NS,
                 on_notice: Callable[[str, str, str], None] | None = None):
        streams = tuple(streams)
        if not streams or len(set(streams)) != len(streams):
            raise ValueError(f"need one or more distinct stream names, got {streams}")
        if slop_ns < 0:
            raise ValueError(f"slop_ns must be >= 0, got {slop_ns}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if jump_back_ns <= 0:
            raise ValueError(f"jump_back_ns must be > 0, got {jump_back_ns}")
        self.streams = streams
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self.jump_back_ns = int(jump_back_ns)
        self._on_notice = on_notice
        self._lock = threading.Lock()   # rclpy's MultiThreadedExecutor may run callbacks concurrently
        self._stamps: dict[str, list[int]] = {s: [] for s in streams}   # sorted, parallel to _items
        self._items: dict[str, list[Any]] = {s: [] for s in streams}
        self._last_stamp: int | None = None
        self._newest: dict[str, int] = {}   # per stream, the newest stamp since the last restart
        self._dropped = dict.fromkeys(streams, 0)
        self._late = 0
        self._duplicates = 0
        self._restarts = 0
        self._emitted = 0

    @property
    def dropped(self) -> dict[str, int]:
        """Per stream, items discarded unmatched: pushed out of a full queue or passed over by an emitted set."""
        with self._lock:
            return dict(self._dropped)

    @property
    def late(self) -> int:
        """Items refused because they were at or before the last emitted set's stamp."""
        with self._lock:
            return self._late

    @property
    def duplicates(self) -> int:
        """Items refused because their stream had just given the same stamp."""
        with self._lock:
            return self._duplicates

    @property
    def restarts(self) -> int:
        """Times the clock was seen to jump back and matching restarted."""
        with self._lock:
            return self._restarts

    @property
    def emitted(self) -> int:
        with self._lock:
            return self._emitted

    def add(self, stream: str, stamp_ns: int, item: Any) -> list[tuple[int, dict[str, Any]]]:
        """Queue `item`; the sets its arrival completes as (set stamp, {stream: item}) - at most one, since
        every other complete set was emitted when its own last member arrived."""
        if stream not in self._stamps:
            raise KeyError(f"unknown stream {stream!r}; known: {', '.join(self.streams)}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            newest = self._newest.get(stream)
            if newest is not None and stamp_ns == newest:
                self._duplicates += 1
                self._notice("duplicate", stream, f"{stream} stamped {_s(stamp_ns)} repeats the stamp of the "
                                                  f"newest {stream}; the first one is kept")
                return []
            if newest is not None and newest - stamp_ns > self.jump_back_ns:
                self._restart()
                self._notice("jump_back", stream, f"{stream} stamped {_s(stamp_ns)} is {_s(newest - stamp_ns)} "
                                                  f"behind the newest {stream} ({_s(newest)}): the clock jumped back "
                                                  "(bag loop, simulator reset?); matching restarts from here")
                newest = None
            if self._last_stamp is not None and stamp_ns <= self._last_stamp:
                self._late += 1
                self._notice("late", stream, f"{stream} stamped {_s(stamp_ns)} arrived after a set stamped "
                                     f"{_s(self._last_stamp)} was matched; skipped")
                return []
            self._newest[stream] = stamp_ns if newest is None else max(stamp_ns, newest)
            index = bisect.bisect_right(self._stamps[stream], stamp_ns)
            self._stamps[stream].insert(index, stamp_ns)
            self._items[stream].insert(index, item)
            picks = self._tightest_set(stream, index)
            matched = [self._emit(picks)] if picks is not None else []
            stamps = self._stamps[stream]
            while len(stamps) > self.queue_size:
                del stamps[0], self._items[stream][0]
                self._dropped[stream] += 1
            return matched

    def _restart(self) -> None:
        for s in self.streams:
            self._dropped[s] += len(self._stamps[s])
            self._stamps[s].clear()
            self._items[s].clear()
        self._newest.clear()
        self._last_stamp = None
        self._restarts += 1

    def _notice(self, kind: str, stream: str, sentence: str) -> None:
        if self._on_notice is not None:
            self._on_notice(kind, stream, sentence)

    def _tightest_set(self, stream: str, index: int) -> dict[str, int] | None:
        """Queue indices, per stream, of the smallest-spread set containing item `index` of `stream`.

        The best set's oldest stamp is one of the queued stamps in [stamp - slop, stamp]; for each such
        lower bound, the best set above it takes each stream's first stamp at or after it."""
        stamp = self._stamps[stream][index]
        others = [s for s in self.streams if s != stream]
        lows = sorted({stamp} | {t for s in others for t in self._stamps[s] if stamp - self.slop_ns <= t <= stamp})
        best, best_spread = None, None
        for low in lows:
            picks = {s: bisect.bisect_left(self._stamps[s], low) for s in others}
            if any(i == len(self._stamps[s]) for s, i in picks.items()):
                continue
            chosen = [self._stamps[s][i] for s, i in picks.items()] + [stamp]
            spread = max(chosen) - min(chosen)
            if spread <= self.slop_ns and (best_spread is None or spread < best_spread):
                best, best_spread = {**picks, stream: index}, spread
        return best

    def _emit(self, picks: dict[str, int]) -> tuple[int, dict[str, Any]]:
        set_stamp = max(self._stamps[s][i] for s, i in picks.items())
        matched = {s: self._items[s][picks[s]] for s in self.streams}
        for s in self.streams:
            cut = bisect.bisect_right(self._stamps[s], set_stamp)   # the emitted item and all before it
            del self._stamps[s][:cut], self._items[s][:cut]
            self._dropped[s] += cut - 1
        self._last_stamp = set_stamp
        self._emitted += 1
        return set_stamp, matched


def _s(ns: int) -> str:
    return f"{ns * 1e-9:.3f} s"
