"""Table-top scenes for grasp evaluation: an object catalogue, seeded random layouts, and the MuJoCo model.

Everything here is plain data and text: no simulator is imported, so layouts can be drawn and checked
(and the Gazebo world kept in step with them) without MuJoCo.

Conventions shared with `mujoco_sim` and `worlds/tabletop.sdf`:
  * "base_link" is the world frame: z up, the table top at z = TABLE_HEIGHT, the table centred on the origin.
  * An object's origin is the centre of its main part (parts[0], the body the gripper holds); its yaw turns it
    about z. Closing the fingers along the object's own y axis (grasp yaw = object yaw) never meets the mug's
    handle or the block's long side.
  * The camera sits at CAMERA_POSITION looking at CAMERA_TARGET with a vertical field of view of
    CAMERA_FOVY_DEG, roughly a RealSense D435 on a stand in front of the table.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np

BASE_FRAME = "base_link"
CAMERA_FRAME = "camera_color_optical_frame"
TABLE_HEIGHT = 0.40                      # z of the table top, metres
TABLE_SIZE = (0.80, 0.60)                # x, y extent of the table top
CAMERA_POSITION = (0.55, 0.0, 0.95)
CAMERA_TARGET = (0.0, 0.0, TABLE_HEIGHT)
CAMERA_FOVY_DEG = 58.0
CAMERA_NAME = "rgbd"
# Objects are placed with their origin inside this part of the table: the camera sees all of it from
# 0.6-1.0 m, and it is well inside the table so a knocked object stays on it.
PLACEMENT_X = (-0.20, 0.20)
PLACEMENT_Y = (-0.22, 0.22)
# Free space between the footprints (circles) of neighbouring objects: a finger (1.2 cm thick) opened up to
# 3 cm past an object's side still misses its neighbour.
MIN_CLEARANCE = 0.045

# The gripper: the TCP lies between the pads, FINGER_BELOW_TCP above the fingertips; the pads (the fingers'
# inner faces) run from the tips up to the palm, FINGER_ABOVE_TCP over the TCP, so a grasp at an object's
# centre clears the palm for objects up to 2 * FINGER_ABOVE_TCP tall.
GRIPPER_MAX_OPENING = 0.12
FINGER_BELOW_TCP = 0.02
FINGER_ABOVE_TCP = 0.13
FINGER_THICKNESS = 0.012
PAD_WIDTH = 0.04                         # along the gripper x axis, across the closing direction
GRIP_FORCE = 10.0                        # N each finger squeezes with
# Parked behind and above the camera, where no render can see it.
GRIPPER_HOME = (0.80, 0.0, 1.15)


@dataclass(frozen=True)
class Part:
    """One primitive of an object (collision and visual), in the object's frame."""

    shape: str                       # "box", "cylinder" or "sphere"
    size: tuple[float, ...]          # MuJoCo half-sizes: box (hx, hy, hz), cylinder (radius, half-height), sphere (r,)
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def volume(self) -> float:
        if self.shape == "box":
            return 8 * self.size[0] * self.size[1] * self.size[2]
        if self.shape == "cylinder":
            return math.pi * self.size[0] ** 2 * 2 * self.size[1]
        return 4 / 3 * math.pi * self.size[0] ** 3

    @property
    def half_height(self) -> float:
        return self.size[2] if self.shape == "box" else self.size[1] if self.shape == "cylinder" else self.size[0]

    @property
    def xy_reach(self) -> float:
        """Farthest distance of the part from the object's z axis."""
        x, y = self.pos[0], self.pos[1]
        if self.shape == "box":
            return math.hypot(abs(x) + self.size[0], abs(y) + self.size[1])
        return math.hypot(x, y) + self.size[0]


@dataclass(frozen=True)
class CatalogueObject:
    """An object type: what people call it, its shape and its usual colour (scenes may paint it otherwise:
    `variant`)."""

    name: str
    synonyms: tuple[str, ...]        # nouns it answers to, name included
    colour: str                      # a COLOURS name
    parts: tuple[Part, ...]          # parts[0] is the body a grasp holds; the origin is its centre
    mass: float                      # kg

    @property
    def rgba(self) -> tuple[float, float, float, float]:
        return COLOURS[self.colour]

    @property
    def base_height(self) -> float:
        """Height of the origin above the surface it stands on."""
        return max(p.half_height - p.pos[2] for p in self.parts)

    @property
    def height(self) -> float:
        return self.base_height + max(p.pos[2] + p.half_height for p in self.parts)

    @property
    def footprint_radius(self) -> float:
        return max(p.xy_reach for p in self.parts)

    @property
    def volume(self) -> float:
        return sum(p.volume for p in self.parts)

    @property
    def grasp_width(self) -> float:
        """Width of the main part across the object's y axis: what the fingers close on at grasp yaw = yaw."""
        body = self.parts[0]
        return 2 * (body.size[1] if body.shape == "box" else body.size[0])

    @property
    def grasp_symmetry(self) -> int:
        """How many turns about z give the same grasp of this object: 0 for round bodies (any), 4 for a square
        box, else 2 (the parallel gripper's own symmetry; also for a round cup with a handle)."""
        body, extras = self.parts[0], self.parts[1:]
        if any(math.hypot(p.pos[0], p.pos[1]) > 1e-9 for p in extras):
            return 2
        if body.shape == "box":
            return 4 if math.isclose(body.size[0], body.size[1]) else 2
        return 0

    def variant(self, colour: str | None = None, scale: float = 1.0) -> "CatalogueObject":
        """The same object painted `colour` (a COLOURS name) and scaled by `scale` in every dimension."""
        if colour is not None and colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; the palette has {sorted(COLOURS)}")
        if not 0.5 <= scale <= 1.5:
            raise ValueError(f"scale must be in [0.5, 1.5], got {scale}")
        parts = tuple(Part(p.shape, tuple(v * scale for v in p.size), tuple(v * scale for v in p.pos))
                      for p in self.parts) if scale != 1.0 else self.parts
        return replace(self, colour=colour or self.colour, parts=parts, mass=self.mass * scale ** 3)

    def answers_to(self, noun: str) -> bool:
        """Whether a noun ("mug", "mugs") names this kind of object."""
        return bool(_singular(noun.lower()) & set(self.synonyms))

    def matches(self, phrase: str) -> bool:
        """Whether a phrase such as "cup", "the red mugs" or "blue box" names this object: one of its nouns
        (singular or plural) must appear, and any colour word must be its colour."""
        words = _WORD.findall(phrase.lower())
        colours = {w for w in words if w in COLOURS}
        if colours and self.colour not in colours:
            return False
        return any(self.answers_to(w) for w in words)


def _singular(word: str) -> set[str]:
    forms = {word}
    if word.endswith("s"):
        forms.add(word[:-1])
    if word.endswith("es"):
        forms.add(word[:-2])
    return forms


_WORD = re.compile(r"[a-z]+")
# The paint of simulated objects: hues far enough apart that a colour word picks one of them under the
# scenes' lighting (no grey: under dim light it is not told from white or black by eye either).
COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.10, 0.10, 1.0), "orange": (0.95, 0.50, 0.08, 1.0), "yellow": (0.95, 0.80, 0.10, 1.0),
    "green": (0.10, 0.75, 0.20, 1.0), "blue": (0.10, 0.30, 0.90, 1.0), "purple": (0.55, 0.20, 0.75, 1.0),
    "pink": (0.95, 0.35, 0.65, 1.0), "white": (0.92, 0.92, 0.90, 1.0), "black": (0.07, 0.07, 0.08, 1.0),
}

_CUP_R, _CUP_HH = 0.035, 0.05
CATALOGUE: tuple[CatalogueObject, ...] = (
    CatalogueObject(
        "cup", ("cup", "mug"), "red",
        (Part("cylinder", (_CUP_R, _CUP_HH)),
         # handle: two arms out of the wall and a grip joining them, along the cup's +x
         Part("box", (0.012, 0.006, 0.005), (_CUP_R + 0.010, 0.0, 0.030)),
         Part("box", (0.012, 0.006, 0.005), (_CUP_R + 0.010, 0.0, -0.030)),
         Part("box", (0.005, 0.006, 0.035), (_CUP_R + 0.018, 0.0, 0.0))),
        mass=0.15),
    CatalogueObject("box", ("box", "carton"), "blue", (Part("box", (0.03, 0.03, 0.025)),), mass=0.10),
    CatalogueObject("ball", ("ball", "sphere"), "green", (Part("sphere", (0.032,)),), mass=0.06),
    CatalogueObject(
        "bottle", ("bottle", "flask"), "white",
        (Part("cylinder", (0.030, 0.070)), Part("cylinder", (0.013, 0.025), (0.0, 0.0, 0.095))),
        mass=0.25),
    CatalogueObject("can", ("can", "tin"), "yellow", (Part("cylinder", (0.033, 0.060)),), mass=0.18),
    CatalogueObject("block", ("block", "brick", "bar"), "purple", (Part("box", (0.05, 0.02, 0.0225)),), mass=0.08),
    # the categories added so that several objects share shapes and colours (the first six are ORIGINAL)
    CatalogueObject(
        "jar", ("jar", "pot"), "orange",
        (Part("cylinder", (0.036, 0.050)), Part("cylinder", (0.038, 0.008), (0.0, 0.0, 0.056))), mass=0.20),
    # a low, wide dish: primitives have no hollow, so the bowl is its outer shape
    CatalogueObject(
        "bowl", ("bowl", "dish"), "pink",
        (Part("cylinder", (0.042, 0.022)), Part("cylinder", (0.030, 0.004), (0.0, 0.0, -0.024))), mass=0.12),
    CatalogueObject("cube", ("cube", "dice"), "black", (Part("box", (0.022, 0.022, 0.022)),), mass=0.05),
    CatalogueObject("packet", ("packet", "pack"), "orange", (Part("box", (0.035, 0.022, 0.070)),), mass=0.12),
    CatalogueObject(
        "tumbler", ("tumbler", "glass"), "white", (Part("cylinder", (0.030, 0.055)),), mass=0.12),
)
ORIGINAL_CATEGORIES = ("cup", "box", "ball", "bottle", "can", "block")
CATALOGUE_BY_NAME = {o.name: o for o in CATALOGUE}


def catalogue_object(name: str) -> CatalogueObject:
    try:
        return CATALOGUE_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown object {name!r}; the catalogue has {sorted(CATALOGUE_BY_NAME)}") from None


@dataclass(frozen=True)
class PlacedObject:
    """A catalogue object standing upright on the table at (x, y) in base_link, turned by yaw (radians),
    painted `colour` (None: the category's usual colour) and scaled by `scale`. `label` names the instance
    when a scene holds several of one category ("cup_2"); by default it is the category."""

    category: str
    x: float
    y: float
    yaw: float
    colour: str | None = None
    scale: float = 1.0
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.category

    @property
    def kind(self) -> CatalogueObject:
        return catalogue_object(self.category).variant(self.colour, self.scale)

    @property
    def description(self) -> str:
        """What a person would call it: its colour and category ("red cup")."""
        return f"{self.kind.colour} {self.category}"

    @property
    def position(self) -> np.ndarray:
        """Its origin in base_link when resting on the table."""
        return np.array([self.x, self.y, TABLE_HEIGHT + self.kind.base_height])


@dataclass(frozen=True)
class Appearance:
    """Lighting and table surface of a scene. The default is the fixed look every scene had before scenes
    varied it."""

    light: float = 1.0                                      # scales the lights' diffuse intensity
    table_rgb: tuple[float, float, float] = (0.60, 0.45, 0.30)
    table_grain: float = 0.0                                # fraction of table texels in a darker speckle


DEFAULT_APPEARANCE = Appearance()


def random_appearance(rng: np.random.Generator) -> Appearance:
    """Dimmer or brighter light and a wood, grey or pale table with some grain."""
    tables = ((0.60, 0.45, 0.30), (0.45, 0.33, 0.22), (0.55, 0.55, 0.56), (0.80, 0.78, 0.72), (0.30, 0.30, 0.32))
    table = np.asarray(tables[int(rng.integers(len(tables)))]) * rng.uniform(0.9, 1.1)
    return Appearance(float(rng.uniform(0.6, 1.15)), tuple(float(v) for v in np.clip(table, 0, 1)),
                      float(rng.uniform(0.0, 0.3)))


@dataclass(frozen=True)
class SceneSpec:
    """The objects on the table (instance names unique) and which one a task is about."""

    objects: tuple[PlacedObject, ...]
    target: str | None = None
    seed: int | None = None
    appearance: Appearance = field(default=DEFAULT_APPEARANCE)

    def __post_init__(self):
        names = [o.name for o in self.objects]
        for o in self.objects:
            catalogue_object(o.category)
        if len(set(names)) != len(names):
            raise ValueError(f"instance names must be unique, got {names}")
        if self.target is not None and self.target not in names:
            raise ValueError(f"target {self.target!r} is not among the objects {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objects)

    def get(self, name: str) -> PlacedObject:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"{name!r} is not in the scene {self.names}")


def overlapping_pairs(spec: SceneSpec, clearance: float = MIN_CLEARANCE) -> list[tuple[str, str]]:
    """Pairs of objects whose footprints (circles) are closer than `clearance`."""
    pairs = []
    for i, a in enumerate(spec.objects):
        for b in spec.objects[i + 1:]:
            gap = math.hypot(a.x - b.x, a.y - b.y) - a.kind.footprint_radius - b.kind.footprint_radius
            if gap < clearance:
                pairs.append((a.name, b.name))
    return pairs


def layout(objects: list[PlacedObject], rng: np.random.Generator, what: str = "") -> tuple[PlacedObject, ...]:
    """The objects (their x, y, yaw ignored) placed uniformly inside the placement region with a uniform yaw,
    MIN_CLEARANCE apart. Rejection sampling, restarting the whole layout when one object finds no room:
    deterministic because every draw comes from `rng`."""
    for _ in range(1000):
        placed: list[PlacedObject] = []
        for obj in objects:
            for _ in range(100):
                candidate = replace(obj, x=float(rng.uniform(*PLACEMENT_X)), y=float(rng.uniform(*PLACEMENT_Y)),
                                    yaw=float(rng.uniform(-math.pi, math.pi)))
                if not overlapping_pairs(SceneSpec(tuple(placed) + (candidate,))):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) == len(objects):
            return tuple(placed)
    raise RuntimeError(f"no layout found for {[o.name for o in objects]} {what}")


def random_scene(seed: int, target: str | None = None, n_distractors: int = 2) -> SceneSpec:
    """A layout drawn from `seed` alone: the target (random among ORIGINAL_CATEGORIES when None) and
    n_distractors other ORIGINAL_CATEGORIES objects, each in its usual colour, placed by `layout`. (The scenes
    of the first policy and of bench-pick: each category once, so a noun names one object.)"""
    if not 0 <= n_distractors < len(ORIGINAL_CATEGORIES):
        raise ValueError(f"n_distractors must be in [0, {len(ORIGINAL_CATEGORIES) - 1}], got {n_distractors}")
    rng = np.random.default_rng(seed)
    names = list(ORIGINAL_CATEGORIES)
    if target is None:
        target = names[int(rng.integers(len(names)))]
    catalogue_object(target)
    others = [n for n in names if n != target]
    chosen = [target] + [others[i] for i in rng.permutation(len(others))[:n_distractors]]
    placed = layout([PlacedObject(name, 0.0, 0.0, 0.0) for name in chosen], rng, f"(seed {seed})")
    return SceneSpec(placed, target, seed)


# Varied scenes (demonstrations, evaluation): a random target among 2 to all-but-one other objects.
MIN_DISTRACTORS, MAX_DISTRACTORS = 2, len(ORIGINAL_CATEGORIES) - 1


def varied_scene(seed: int, min_distractors: int = MIN_DISTRACTORS, max_distractors: int = MAX_DISTRACTORS
                 ) -> tuple[SceneSpec, np.random.Generator]:
    """The seeded scene (random target, random distractor count) and a generator for what else is drawn for
    it (the instruction's wording), independent of the layout's own draws."""
    rng = np.random.default_rng([seed, 7])
    return random_scene(seed, n_distractors=int(rng.integers(min_distractors, max_distractors + 1))), rng


def default_scene() -> SceneSpec:
    """The fixed layout of worlds/tabletop.sdf: cup in the middle, box, ball and bottle around it."""
    return SceneSpec((PlacedObject("cup", 0.0, 0.0, math.pi / 2),
                      PlacedObject("box", 0.12, 0.15, 0.3),
                      PlacedObject("ball", -0.12, -0.14, 0.0),
                      PlacedObject("bottle", -0.14, 0.13, 0.0)), target="cup")


def look_at(position, target) -> np.ndarray:
    """Rotation (columns x right, y down, z forward: the optical frame) of a camera at position looking at
    target with no roll, z up."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.column_stack([right, down, forward])


def _vec(values) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def _object_mjcf(placed: PlacedObject) -> str:
    kind, name = placed.kind, placed.name
    density = kind.mass / kind.volume
    geoms = "\n".join(
        f'      <geom name="{name}_{i}" type="{p.shape}" size="{_vec(p.size)}" pos="{_vec(p.pos)}" '
        f'density="{density:.6g}" rgba="{_vec(kind.rgba)}"/>'
        for i, p in enumerate(kind.parts))
    return (f'    <body name="{name}" pos="{_vec(placed.position)}" euler="0 0 {placed.yaw:.6g}">\n'
            f'      <freejoint name="{name}"/>\n{geoms}\n    </body>')


def to_mjcf(spec: SceneSpec, width: int = 640, height: int = 480) -> str:
    """The MuJoCo model of a scene: floor, table, the objects, the RGB-D camera and a free-floating parallel
    gripper dragged by a mocap body (a stand-in for an arm with Cartesian control)."""
    cam = look_at(CAMERA_POSITION, CAMERA_TARGET)
    # MuJoCo cameras look along -z with y up: xyaxes are the optical x and -y.
    xyaxes = _vec(np.concatenate([cam[:, 0], -cam[:, 1]]))
    leg_h = (TABLE_HEIGHT - 0.04) / 2
    tx, ty = TABLE_SIZE[0] / 2, TABLE_SIZE[1] / 2
    legs = "\n".join(
        f'      <geom type="box" pos="{sx * (tx - 0.04)} {sy * (ty - 0.04)} {leg_h}" size="0.02 0.02 {leg_h}" '
        f'material="wood"/>' for sx in (-1, 1) for sy in (-1, 1))
    objects = "\n".join(_object_mjcf(o) for o in spec.objects)
    look = spec.appearance
    head, key, fill = (_vec([v * look.light] * 3) for v in (0.35, 0.5, 0.25))
    if look.table_grain > 0:
        grain = _vec(0.7 * np.asarray(look.table_rgb))
        table_look = (f'<texture name="tabletop" type="2d" builtin="flat" rgb1="{_vec(look.table_rgb)}" mark="random" '
                      f'random="{look.table_grain:.4g}" markrgb="{grain}" width="256" height="256"/>\n'
                      '    <material name="tabletop" texture="tabletop" texrepeat="2 2"/>')
    else:
        table_look = f'<material name="tabletop" rgba="{_vec(look.table_rgb)} 1"/>'
    finger_half = (FINGER_ABOVE_TCP + FINGER_BELOW_TCP) / 2
    finger_z = (FINGER_ABOVE_TCP - FINGER_BELOW_TCP) / 2
    half_open = GRIPPER_MAX_OPENING / 2
    t = FINGER_THICKNESS / 2
    return f"""<mujoco model="dino_vla_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" cone="elliptic" impratio="10" integrator="implicitfast"/>
  <!-- extent 1 makes the znear/zfar below metres -->
  <statistic extent="1" center="0 0 {TABLE_HEIGHT}"/>
  <visual>
    <global offwidth="{width}" offheight="{height}"/>
    <map znear="0.05" zfar="10"/>
    <quality shadowsize="0"/>
    <headlight ambient="{head}" diffuse="{head}" specular="0.05 0.05 0.05"/>
  </visual>
  <asset>
    <texture name="floor" type="2d" builtin="checker" rgb1="0.45 0.45 0.47" rgb2="0.35 0.35 0.37"
             width="256" height="256"/>
    <material name="floor" texture="floor" texrepeat="8 8"/>
    <material name="wood" rgba="0.60 0.45 0.30 1"/>
    {table_look}
    <material name="metal" rgba="0.25 0.25 0.28 1"/>
    <material name="pad" rgba="0.15 0.15 0.15 1"/>
  </asset>
  <default>
    <!-- plastic on wood: a nudged object slides rather than tips; the pads' rubber (1.5) wins where they touch -->
    <geom friction="0.5 0.005 0.0001"/>
  </default>
  <worldbody>
    <light pos="0.3 0.3 2.0" dir="-0.15 -0.15 -1" diffuse="{key}" castshadow="false"/>
    <light pos="-0.5 -0.4 1.6" dir="0.3 0.25 -1" diffuse="{fill}" castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.05" material="floor"/>
    <body name="table">
      <geom name="table_top" type="box" pos="0 0 {TABLE_HEIGHT - 0.02}" size="{tx} {ty} 0.02" material="tabletop"/>
{legs}
    </body>
{objects}
    <camera name="{CAMERA_NAME}" pos="{_vec(CAMERA_POSITION)}" xyaxes="{xyaxes}" fovy="{CAMERA_FOVY_DEG}"/>
    <body name="gripper_target" mocap="true" pos="{_vec(GRIPPER_HOME)}"/>
    <!-- origin = TCP, between the pads; the fingers close along the gripper's y axis -->
    <body name="gripper" pos="{_vec(GRIPPER_HOME)}" gravcomp="1">
      <freejoint name="gripper"/>
      <geom name="palm" type="box" pos="0 0 {FINGER_ABOVE_TCP + 0.015}" size="0.02 {half_open + 2 * t + 0.005} 0.015"
            mass="0.4" material="metal"/>
      <geom name="wrist" type="cylinder" pos="0 0 {FINGER_ABOVE_TCP + 0.07}" size="0.03 0.04" mass="0.3"
            material="metal"/>
      <body name="finger_left" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 1 0" range="0 {half_open}" damping="5" solreflimit="0.004 1"/>
        <geom name="finger_left" type="box" pos="0 {t} {finger_z}" size="{PAD_WIDTH / 2} {t} {finger_half}"
              mass="0.04" friction="1.5 0.02 0.001" condim="4" solref="0.004 1" solimp="0.95 0.99 0.001"
              material="pad"/>
      </body>
      <body name="finger_right" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {half_open}" damping="5" solreflimit="0.004 1"/>
        <geom name="finger_right" type="box" pos="0 {-t} {finger_z}" size="{PAD_WIDTH / 2} {t} {finger_half}"
              mass="0.04" friction="1.5 0.02 0.001" condim="4" solref="0.004 1" solimp="0.95 0.99 0.001"
              material="pad"/>
      </body>
    </body>
  </worldbody>
  <tendon>
    <!-- length = distance between the pads -->
    <fixed name="opening">
      <joint joint="finger_left" coef="1"/>
      <joint joint="finger_right" coef="1"/>
    </fixed>
  </tendon>
  <equality>
    <weld body1="gripper_target" body2="gripper" solref="0.01 1"/>
    <!-- the fingers move together, as in a linkage-coupled gripper -->
    <joint joint1="finger_right" joint2="finger_left" solref="0.004 1" solimp="0.95 0.99 0.001"/>
  </equality>
  <contact>
    <exclude body1="gripper" body2="finger_left"/>
    <exclude body1="gripper" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    <!-- commands the opening; asking below 0 squeezes each finger with at most the force limit -->
    <position name="fingers" tendon="opening" kp="1000" ctrlrange="-0.01 {GRIPPER_MAX_OPENING}"
              forcerange="-{GRIP_FORCE} {GRIP_FORCE}"/>
  </actuator>
</mujoco>
"""
