"""Which of several localised objects an instruction means: its colour (measured under each mask), its size
word (compared in 3D among the candidates) and its spatial relation to reference objects (in the target
frame, left/right and in front/behind as seen from the camera). ROS-free and model-free: the pick planner
runs it on a detector's objects and the evaluation on the simulator's.

The rules, so that a user can predict them:
  * left/right is along the camera's image x axis laid flat on the table; in front of = nearer the camera
    along its viewing direction laid flat; both need RELATION_MARGIN_M of clearance.
  * nearest/farthest measure distance on the table (x, y) to the camera or, for "the robot", to the target
    frame's origin.
  * several candidates that fit and none clearly best (CLEAR_RATIO of the runner-up's distance, SIZE_RATIO
    of its size or, with nothing else said, RIVAL_SCORE_RATIO of its detection score) is `ambiguous`, naming
    them; none that fits is `no_object`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dino_vla.geometry.localise import gravity_aligned_box
from dino_vla.language import ObjectPhrase, Relation
from dino_vla.types import Object3D, RigidTransform

RELATION_MARGIN_M = 0.02     # left of / in front of: at least this far past the reference's centre
CLEAR_RATIO = 0.75           # a nearest choice must be this much nearer than the runner-up
EXTREME_MARGIN_M = 0.03      # leftmost / nearest-the-camera: ahead of the runner-up by this much
SIZE_RATIO = 1.15            # "the big cup": at least this much bigger than the next
SAME_OBJECT_M = 0.03         # two detections whose centres are this close are one object
RIVAL_SCORE_RATIO = 0.8      # with nothing else to tell them apart, a detection scoring under this share of
                             # the best one's score is taken for a weaker false match, not a second object


class GroundingFailure(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason       # "no_object" or "ambiguous"


@dataclass(frozen=True)
class Candidate:
    """One localised detection: which it is, what it looks like and where (target frame)."""

    index: int                 # detection index
    score: float
    colour: str                # measured under its mask; "" unknown
    obj: Object3D

    @property
    def centre(self) -> np.ndarray:
        return np.asarray(self.obj.centroid, float)

    @property
    def volume(self) -> float:
        """Of the gravity-aligned box around its points (target frame z up): the oriented box of a partial
        view tilts with what the camera happens to see of the object."""
        return float(np.prod(gravity_aligned_box(self.obj.points)[2]))

    @property
    def height(self) -> float:
        """Vertical spread of its points (target frame z up), robust to a few stray ones."""
        z = self.obj.points[:, 2]
        return float(np.percentile(z, 98) - np.percentile(z, 2)) if len(z) else 0.0

    def describe(self) -> str:
        x, y, _ = self.centre
        colour = f"{self.colour} " if self.colour else ""
        return f"{colour}{self.obj.phrase} at ({x:.2f}, {y:.2f})"


@dataclass(frozen=True)
class ViewAxes:
    """The camera's directions laid flat on the table (unit vectors in the target frame) and the anchors."""

    right: np.ndarray
    forward: np.ndarray
    camera: np.ndarray
    robot: np.ndarray

    @classmethod
    def of(cls, camera_to_target: RigidTransform) -> "ViewAxes":
        rotation = np.asarray(camera_to_target.rotation, float)

        def flat(v: np.ndarray) -> np.ndarray:
            v = np.array([v[0], v[1], 0.0])
            norm = np.linalg.norm(v)
            if norm < 1e-6:
                raise ValueError("the camera looks straight down its target frame's z axis: left/right and "
                                 "front/behind are undefined")
            return v / norm

        right = flat(rotation[:, 0])
        # a camera looking straight down has no horizontal viewing direction: its image "up" is away from it
        forward = flat(rotation[:, 2]) if np.linalg.norm(rotation[:2, 2]) > 0.1 else flat(-rotation[:, 1])
        return cls(right, forward, np.asarray(camera_to_target.translation, float), np.zeros(3))


def distinct(candidates: list[Candidate]) -> list[Candidate]:
    """Detections of one object merged (best score kept): a detector's overlapping boxes are not two cups."""
    kept: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: -c.score):
        if all(np.linalg.norm(c.centre - k.centre) > SAME_OBJECT_M for k in kept):
            kept.append(c)
    return kept


def fits_colour(measured: str, phrase: ObjectPhrase) -> bool:
    """Whether an object whose pixels measured `measured` ("" unknown: nothing measured it) may be `phrase`."""
    return not phrase.colour or not measured or measured == phrase.colour


def _names(candidates: list[Candidate]) -> str:
    return "; ".join(c.describe() for c in candidates)


def _ambiguous(what: str, candidates: list[Candidate]) -> GroundingFailure:
    return GroundingFailure("ambiguous", f"{len(candidates)} objects fit {what}: {_names(candidates)}; say which "
                                         "one (by colour, size or position)")


def _by_size(candidates: list[Candidate], size: str, what: str) -> Candidate:
    measure = {"big": lambda c: c.volume, "small": lambda c: -c.volume,
               "tall": lambda c: c.height, "short": lambda c: -c.height}[size]
    ranked = sorted(candidates, key=measure, reverse=True)
    if len(ranked) > 1:
        first, second = abs(measure(ranked[0])), abs(measure(ranked[1]))
        ratio = first / max(second, 1e-12) if size in ("big", "tall") else second / max(first, 1e-12)
        if ratio < SIZE_RATIO:
            raise _ambiguous(f"{what} (the two most {size} are of about the same size)", ranked[:2])
    return ranked[0]


def _clear_minimum(values: list[tuple[float, Candidate]], what: str, absolute: bool) -> Candidate:
    """The candidate with the smallest value, if it beats the runner-up clearly (by EXTREME_MARGIN_M when
    `absolute`, else by CLEAR_RATIO)."""
    values = sorted(values, key=lambda v: v[0])
    if len(values) > 1:
        (best, _), (runner_up, _) = values[0], values[1]
        clear = best <= runner_up - EXTREME_MARGIN_M if absolute else best <= CLEAR_RATIO * runner_up
        if not clear:
            raise _ambiguous(what, [c for _, c in values[:2]])
    return values[0][1]


def choose(target: ObjectPhrase, candidates: list[Candidate], relation: Relation | None,
           references: list[list[Candidate]], axes: ViewAxes) -> Candidate:
    """The one candidate (already of the target's phrase, distinct, colour-checked) the instruction means.
    `references` holds the distinct, colour-checked candidates of each of the relation's references."""
    what = f"'{target.phrase}'"
    if not candidates:
        raise GroundingFailure("no_object", f"no {what} in view")
    if relation is not None:
        candidates = _related(candidates, relation, references, axes, what)
    if target.size:
        return _by_size(candidates, target.size, what)
    best = max(candidates, key=lambda c: c.score)
    rivals = [c for c in candidates if c.score >= RIVAL_SCORE_RATIO * best.score]
    if len(rivals) > 1:
        raise _ambiguous(what, rivals)
    return best


def _related(candidates: list[Candidate], relation: Relation, references: list[list[Candidate]],
             axes: ViewAxes, what: str) -> list[Candidate]:
    """The candidates that satisfy the relation; a single one when the relation itself picks (nearest,
    leftmost, next to); else ambiguous / no_object."""
    kind = relation.type
    if kind in ("leftmost", "rightmost"):
        sign = 1.0 if kind == "leftmost" else -1.0
        return [_clear_minimum([(sign * float(c.centre @ axes.right), c) for c in candidates],
                               f"{what} {kind}", absolute=True)]
    if kind in ("nearest", "farthest"):
        anchor = axes.camera if relation.anchor == "camera" else axes.robot
        sign = 1.0 if kind == "nearest" else -1.0
        return [_clear_minimum([(sign * float(np.linalg.norm((c.centre - anchor)[:2])), c) for c in candidates],
                               f"{what} {kind} the {relation.anchor or 'robot'}", absolute=True)]
    refs = []
    for phrase, found in zip(relation.references, references):
        if not found:
            raise GroundingFailure("no_object", f"no '{phrase.phrase}' in view to find {what} {kind} it")
        if len(found) > 1:
            raise _ambiguous(f"the reference '{phrase.phrase}'", found)
        refs.append(found[0])
    others = [c for c in candidates if all(np.linalg.norm(c.centre - r.centre) > SAME_OBJECT_M for r in refs)]
    if not others:
        raise GroundingFailure("no_object", f"no {what} other than the reference in view")
    if kind == "between":
        if len(refs) != 2:
            raise GroundingFailure("no_object", f"'between' needs two references, the instruction names {len(refs)}")
        fits = []
        a, b = refs[0].centre[:2], refs[1].centre[:2]
        span = b - a
        length = float(np.linalg.norm(span))
        for c in others:
            t = float((c.centre[:2] - a) @ span) / max(length ** 2, 1e-12)
            off = abs(_cross(span, c.centre[:2] - a)) / max(length, 1e-12)
            if 0.0 < t < 1.0 and off < 0.5 * length:
                fits.append((off, c))
        if not fits:
            raise GroundingFailure("no_object", f"no {what} between the {refs[0].describe()} and the "
                                                f"{refs[1].describe()}")
        return [_clear_minimum(fits, f"{what} between them", absolute=False)]
    ref = refs[0]
    distance = [(float(np.linalg.norm((c.centre - ref.centre)[:2])), c) for c in others]
    if kind == "near":
        return [_clear_minimum(distance, f"{what} next to the {ref.describe()}", absolute=False)]
    axis, sign = {"left_of": (axes.right, -1.0), "right_of": (axes.right, 1.0),
                  "in_front_of": (axes.forward, -1.0), "behind": (axes.forward, 1.0)}[kind]
    fits = [(d, c) for d, c in distance if sign * float((c.centre - ref.centre) @ axis) > RELATION_MARGIN_M]
    if not fits:
        raise GroundingFailure("no_object", f"no {what} {kind.replace('_', ' ')} the {ref.describe()}")
    return [_clear_minimum(fits, f"{what} {kind.replace('_', ' ')} the {ref.describe()}", absolute=False)]


def _cross(a: np.ndarray, b: np.ndarray) -> float:
    return float(a[0] * b[1] - a[1] * b[0])
