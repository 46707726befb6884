import sys
import threading

import pytest

from dino_vla.sync import ApproximateTimeSync

MS = 1_000_000


def test_exact_stamps_pair_up():
    sync = ApproximateTimeSync(["rgb", "depth"], slop_ns=0)
    assert sync.add("rgb", 100, "rgb100") == []
    assert sync.add("depth", 100, "depth100") == [(100, {"rgb": "rgb100", "depth": "depth100"})]
    assert sync.add("depth", 133, "depth133") == []
    assert sync.add("rgb", 134, "rgb134") == []          # 1 ns apart is too far at slop 0
    assert sync.emitted == 1


def test_matches_within_slop_never_outside():
    sync = ApproximateTimeSync(["a", "b"], slop_ns=5 * MS)
    sync.add("a", 100 * MS, "a100")
    assert sync.add("b", 106 * MS, "b106") == []         # 6 ms > slop
    assert sync.add("b", 104 * MS, "b104") == [(104 * MS, {"a": "a100", "b": "b104"})]
    assert sync.add("a", 111 * MS, "a111") == [(111 * MS, {"a": "a111", "b": "b106"})]
    assert sync.add("a", 200 * MS, "a200") == []
    assert sync.add("b", 194 * MS, "b194") == []          # 6 ms again
    assert sync.emitted == 2


def test_closest_set_wins():
    sync = ApproximateTimeSync(["a", "b"], slop_ns=10 * MS)
    for t in (90, 96, 102):
        sync.add("a", t * MS, f"a{t}")
    assert sync.add("b", 100 * MS, "b100") == [(102 * MS, {"a": "a102", "b": "b100"})]
    # a90 and a96 were passed over, and nothing at or before 102 ms can come out any more
    assert sync.dropped == {"a": 2, "b": 0}
    assert sync.add("b", 95 * MS, "b95") == []
    assert sync.late == 1


def test_queue_overflow_drops_the_oldest():
    sync = ApproximateTimeSync(["rgb", "mask"], slop_ns=0, queue_size=3)
    for t in range(1, 6):
        sync.add("rgb", t, f"rgb{t}")
    assert sync.dropped == {"rgb": 2, "mask": 0}
    assert sync.add("mask", 1, "mask1") == []               # its rgb was pushed out
    assert sync.add("mask", 3, "mask3") == [(3, {"rgb": "rgb3", "mask": "mask3"})]
    assert sync.dropped == {"rgb": 2, "mask": 1}            # mask1, passed over by the set at 3


def test_out_of_order_arrival_after_a_newer_set_is_late():
    sync = ApproximateTimeSync(["a", "b"], slop_ns=2)
    sync.add("a", 50, "a50")
    assert sync.add("b", 51, "b51") == [(51, {"a": "a50", "b": "b51"})]
    assert sync.add("a", 40, "a40") == []
    assert sync.add("b", 40, "b40") == []                   # would match a40 if sets could go back in time
    assert sync.add("b", 51, "b51 again") == []             # b's own stamp again: a duplicate
    assert sync.late == 2 and sync.duplicates == 1
    # within a queue, arrival order does not matter
    sync.add("a", 70, "a70")
    sync.add("a", 60, "a60")
    assert sync.add("b", 61, "b61") == [(61, {"a": "a60", "b": "b61"})]
    assert sync.add("b", 70, "b70") == [(70, {"a": "a70", "b": "b70"})]


def test_slow_masks_match_the_frames_of_their_own_stamp():
    """30 Hz rgb + depth (depth stamped up to 1 ms off), 5 Hz masks stamped with their rgb frame and
    arriving 150 ms late; every mask must come out with the rgb and depth of its frame."""
    sync = ApproximateTimeSync(["rgb", "depth", "mask"], slop_ns=5 * MS, queue_size=10)
    events = []
    for frame in range(60):
        stamp = frame * 33_333_333
        events.append((stamp, "rgb", stamp))
        events.append((stamp + 2 * MS, "depth", stamp + (frame % 3 - 1) * MS))
        if frame % 6 == 0:
            events.append((stamp + 150 * MS, "mask", stamp))
    sets = []
    for _, stream, stamp in sorted(events):
        sets += sync.add(stream, stamp, (stream, stamp))
    assert len(sets) == 10 and sync.late == 0
    for set_stamp, items in sets:
        rgb_stamp = items["mask"][1]
        assert items["rgb"] == ("rgb", rgb_stamp)
        assert abs(items["depth"][1] - rgb_stamp) <= MS
        assert set_stamp == max(item[1] for item in items.values())
    assert sync.dropped["mask"] == 0


def test_four_streams():
    sync = ApproximateTimeSync(["rgb", "depth", "info", "mask"], slop_ns=3)
    out = []
    for stream, stamp in [("rgb", 10), ("depth", 11), ("info", 10), ("rgb", 20), ("mask", 12), ("mask", 21),
                          ("info", 20), ("depth", 19)]:
        out += sync.add(stream, stamp, f"{stream}{stamp}")
    assert out == [(12, {"rgb": "rgb10", "depth": "depth11", "info": "info10", "mask": "mask12"}),
                   (21, {"rgb": "rgb20", "depth": "depth19", "info": "info20", "mask": "mask21"})]


def test_bad_arguments():
    with pytest.raises(KeyError, match="unknown stream 'ir'; known: rgb, depth"):
        ApproximateTimeSync(["rgb", "depth"], slop_ns=0).add("ir", 1, None)
    with pytest.raises(ValueError, match="slop_ns"):
        ApproximateTimeSync(["rgb"], slop_ns=-1)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSync(["rgb"], slop_ns=0, queue_size=0)
    with pytest.raises(ValueError, match="distinct"):
        ApproximateTimeSync(["rgb", "rgb"], slop_ns=0)


@pytest.mark.parametrize("attempt", range(3))   # a race shows in some runs only
def test_concurrent_adds_emit_consistent_sets(attempt):
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)            # switch threads often, so unlocked updates would collide
    n = 5000
    sync = ApproximateTimeSync(["a", "b"], slop_ns=0, queue_size=n)   # no overflow: every stamp must pair
    results, errors = {"a": [], "b": []}, []

    def feed(stream):
        try:
            for t in range(1, n + 1):
                results[stream] += sync.add(stream, t, (stream, t))
        except Exception as error:     # a thread's exception would not fail the test by itself
            errors.append(error)

    threads = [threading.Thread(target=feed, args=(s,)) for s in ("a", "b")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert errors == []
    sets = results["a"] + results["b"]
    assert sorted(stamp for stamp, _ in sets) == list(range(1, n + 1))    # each stamp once
    for stamp, items in sets:
        assert items == {"a": ("a", stamp), "b": ("b", stamp)}
    assert sync.emitted == n and sync.late == 0 and sync.dropped == {"a": 0, "b": 0}
