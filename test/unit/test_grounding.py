"""geometry.grounding: which localised object an instruction means, from colour, size and spatial relations,
as seen from the simulator's camera (image right = base +y, looking along -x), or why none/several."""
import numpy as np
import pytest

from dino_vla.geometry.grounding import (
    CLEAR_RATIO, RIVAL_SCORE_RATIO, Candidate, GroundingFailure, ViewAxes, choose, distinct, fits_colour)
from dino_vla.language import ObjectPhrase, Relation
from dino_vla.sim.scene import BASE_FRAME, CAMERA_FRAME, CAMERA_POSITION, CAMERA_TARGET, look_at
from dino_vla.types import Object3D, RigidTransform

CAMERA = RigidTransform(look_at(CAMERA_POSITION, CAMERA_TARGET), np.asarray(CAMERA_POSITION), BASE_FRAME,
                        CAMERA_FRAME)
AXES = ViewAxes.of(CAMERA)


def thing(index, x, y, colour="red", size=0.06, height=0.08, score=0.9, phrase="cup"):
    """A box of points standing on the table at (x, y)."""
    grid = np.stack(np.meshgrid(*(np.linspace(-0.5, 0.5, 6),) * 3), -1).reshape(-1, 3)
    points = (grid * [size, size, height] + [x, y, 0.4 + height / 2]).astype(np.float32)
    return Candidate(index, score, colour, Object3D(phrase, score, BASE_FRAME, points, np.array([x, y, 0.44]),
                                                   np.eye(3), np.array([size, size, height])))


CUP = ObjectPhrase("cup")


def test_view_axes_of_the_sim_camera():
    np.testing.assert_allclose(AXES.right, [0, 1, 0], atol=1e-9)
    np.testing.assert_allclose(AXES.forward, [-1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(AXES.camera, CAMERA_POSITION)
    down = RigidTransform(np.diag([1.0, -1.0, -1.0]), np.array([0, 0, 1.0]), BASE_FRAME, CAMERA_FRAME)
    np.testing.assert_allclose(ViewAxes.of(down).forward, [0, 1, 0], atol=1e-9)   # image up, laid flat


def test_colour_is_checked_only_where_it_was_measured_and_said():
    assert fits_colour("red", ObjectPhrase("cup", "red")) and not fits_colour("blue", ObjectPhrase("cup", "red"))
    assert fits_colour("", ObjectPhrase("cup", "red")) and fits_colour("blue", CUP)


def test_one_candidate_is_chosen_and_none_is_no_object():
    only = thing(0, 0.0, 0.0)
    assert choose(CUP, [only], None, [], AXES) is only
    with pytest.raises(GroundingFailure) as err:
        choose(CUP, [], None, [], AXES)
    assert err.value.reason == "no_object" and "'cup'" in str(err.value)


def test_alike_candidates_are_ambiguous_and_named_unless_one_scores_clearly_higher():
    a, b = thing(0, 0.0, -0.1, "red"), thing(1, 0.0, 0.1, "blue", score=0.85)
    with pytest.raises(GroundingFailure) as err:
        choose(CUP, [a, b], None, [], AXES)
    assert err.value.reason == "ambiguous" and "red cup at (0.00, -0.10)" in str(err.value) \
        and "blue cup at (0.00, 0.10)" in str(err.value)
    weak = thing(1, 0.0, 0.1, score=0.9 * RIVAL_SCORE_RATIO - 0.01)
    assert choose(CUP, [a, weak], None, [], AXES) is a


def test_overlapping_detections_of_one_object_are_one_candidate():
    a, again, other = thing(0, 0.0, 0.0, score=0.9), thing(1, 0.01, 0.01, score=0.8), thing(2, 0.0, 0.15)
    assert sorted(c.index for c in distinct([again, other, a])) == [0, 2]


@pytest.mark.parametrize("size, index", [("big", 1), ("small", 0), ("tall", 2), ("short", 0)])
def test_size_words_compare_the_candidates(size, index):
    small, big = thing(0, 0, -0.15, size=0.05, height=0.06), thing(1, 0, 0.0, size=0.08, height=0.07)
    tall = thing(2, 0, 0.15, size=0.05, height=0.12)
    chosen = choose(ObjectPhrase("cup", size=size), [small, big, tall] if size in ("tall", "short")
                    else [small, big], None, [], AXES)
    assert chosen.index == index


def test_sizes_too_close_to_tell_are_ambiguous():
    with pytest.raises(GroundingFailure, match="ambiguous|same size") as err:
        choose(ObjectPhrase("cup", size="big"), [thing(0, 0, -0.1), thing(1, 0, 0.1, size=0.061)], None, [], AXES)
    assert err.value.reason == "ambiguous"


BOX = thing(9, 0.0, 0.0, "blue", phrase="box")


@pytest.mark.parametrize("kind, expected", [
    ("left_of", 0), ("right_of", 1), ("in_front_of", 2), ("behind", 3)])
def test_directions_are_as_seen_from_the_camera(kind, expected):
    # image left = base -y; in front of = nearer the camera = +x
    cups = [thing(0, 0.0, -0.12), thing(1, 0.0, 0.12), thing(2, 0.14, 0.0), thing(3, -0.14, 0.0)]
    chosen = choose(CUP, cups, Relation(kind, (ObjectPhrase("box"),)), [[BOX]], AXES)
    assert chosen.index == expected


def test_of_several_that_fit_the_nearest_to_the_reference_is_chosen_if_clearly_nearest():
    near, far = thing(0, 0.0, -0.08), thing(1, 0.0, -0.2)
    assert choose(CUP, [far, near], Relation("left_of", (ObjectPhrase("box"),)), [[BOX]], AXES) is near
    close = thing(1, 0.0, -0.08 / CLEAR_RATIO + 0.01)
    with pytest.raises(GroundingFailure) as err:
        choose(CUP, [close, near], Relation("left_of", (ObjectPhrase("box"),)), [[BOX]], AXES)
    assert err.value.reason == "ambiguous"


def test_nothing_on_that_side_is_no_object():
    with pytest.raises(GroundingFailure) as err:
        choose(CUP, [thing(0, 0.0, 0.1)], Relation("left_of", (ObjectPhrase("box"),)), [[BOX]], AXES)
    assert err.value.reason == "no_object" and "left of the blue box" in str(err.value)


def test_references_must_be_there_and_be_one():
    relation = Relation("near", (ObjectPhrase("box"),))
    with pytest.raises(GroundingFailure, match="no 'box' in view") as err:
        choose(CUP, [thing(0, 0, 0.1)], relation, [[]], AXES)
    assert err.value.reason == "no_object"
    with pytest.raises(GroundingFailure) as err:
        choose(CUP, [thing(0, 0, 0.1)], relation, [[BOX, thing(8, 0.1, -0.1, phrase="box")]], AXES)
    assert err.value.reason == "ambiguous" and "reference" in str(err.value)


def test_the_reference_itself_is_never_the_answer():
    same_place = thing(0, 0.0, 0.0)
    with pytest.raises(GroundingFailure, match="other than the reference"):
        choose(CUP, [same_place], Relation("near", (ObjectPhrase("cup"),)), [[same_place]], AXES)


def test_between_two_references():
    a, b = thing(7, 0.0, -0.2, phrase="box"), thing(8, 0.0, 0.2, phrase="can")
    inside, outside = thing(0, 0.02, 0.03), thing(1, 0.0, 0.3)
    relation = Relation("between", (ObjectPhrase("box"), ObjectPhrase("can")))
    assert choose(CUP, [outside, inside], relation, [[a], [b]], AXES) is inside
    with pytest.raises(GroundingFailure) as err:
        choose(CUP, [outside], relation, [[a], [b]], AXES)
    assert err.value.reason == "no_object"


@pytest.mark.parametrize("relation, expected", [
    (Relation("leftmost"), 0), (Relation("rightmost"), 2), (Relation("nearest", (), "camera"), 1),
    (Relation("farthest", (), "camera"), 0), (Relation("nearest", (), "robot"), 1)])
def test_extremes(relation, expected):
    cups = [thing(0, -0.15, -0.15), thing(1, 0.10, 0.0), thing(2, -0.05, 0.15)]
    assert choose(CUP, cups, relation, [], AXES).index == expected


def test_extremes_too_close_to_call_are_ambiguous():
    with pytest.raises(GroundingFailure) as err:
        choose(CUP, [thing(0, 0.1, -0.10), thing(1, -0.1, -0.09)], Relation("leftmost"), [], AXES)
    assert err.value.reason == "ambiguous"
