"""Demonstration datasets on disk: frames (RGB-D + instance labels + camera) and episodes (an instruction, the
frame it was given on, the grasp that was commanded, and what happened).

The layout follows LeRobot's v2 datasets (`meta/info.json`, `meta/tasks.jsonl`, `meta/episodes.jsonl`,
chunked data files) so the same ideas apply, but lerobot itself is not a dependency: under our torch pin pip
resolves only lerobot 0.3.2 and ~50 extra packages (wandb, diffusers, torchvision, ...). Frames are stored as
safetensors files (no pickle) holding lossless PNGs:

    <root>/meta/info.json           format, version, source, counts, units, the fields below
    <root>/meta/tasks.jsonl         {"task_index", "task"}: each distinct instruction once
    <root>/meta/episodes.jsonl      one line per episode, see Episode
    <root>/data/chunk-NNN/frame_NNNNNN.safetensors
        rgb    uint8 PNG bytes of the (H, W, 3) colour image
        depth  uint8 PNG bytes of the (H, W) uint16 depth in millimetres (0 = no reading)
        labels uint8 PNG bytes of the (H, W) uint16 instance image: 0 background, k = objects[k - 1]
        K      float64 (4,) fx, fy, cx, cy
        camera_to_base float64 (4, 4) the camera optical frame's pose in the base frame
      metadata: objects (JSON list of the instances' names, "object" where unknown), camera_frame, base_frame,
      stamp_ns

Episodes are appended as they finish, so a recorder that dies loses at most the episode in flight; info.json is
rewritten on close.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from dino_vla.geometry.depth import DepthFrame
from dino_vla.types import CameraIntrinsics, Grasp, RigidTransform

FORMAT = "dino_vla.demonstrations"
VERSION = 1
FRAMES_PER_CHUNK = 1000


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class RecordedFrame:
    """One camera frame of a demonstration, with the instance masks seen in it."""

    rgb: np.ndarray                  # (H, W, 3) uint8
    depth_m: np.ndarray              # (H, W) float32 metres, 0 or non-finite = no reading
    labels: np.ndarray               # (H, W) integer, 0 background, k = objects[k - 1]
    objects: tuple[str, ...]         # a name per instance ("object" where the source does not know it)
    intrinsics: CameraIntrinsics
    camera_to_base: RigidTransform   # camera optical frame (child) in the base frame (parent)
    stamp_ns: int = 0

    def __post_init__(self):
        h, w = self.labels.shape
        if self.rgb.shape != (h, w, 3) or self.depth_m.shape != (h, w):
            raise DatasetError(f"rgb {self.rgb.shape}, depth {self.depth_m.shape} and labels {self.labels.shape} "
                               f"must share one (H, W)")
        if (self.intrinsics.height, self.intrinsics.width) != (h, w):
            raise DatasetError(f"intrinsics are {self.intrinsics.width}x{self.intrinsics.height}, images {w}x{h}")
        if int(self.labels.max(initial=0)) > len(self.objects):
            raise DatasetError(f"labels go up to {int(self.labels.max())}, only {len(self.objects)} objects named")

    def mask(self, index: int) -> np.ndarray:
        return self.labels == index + 1

    def depth_frame(self) -> DepthFrame:
        return DepthFrame(self.depth_m, self.intrinsics, self.camera_to_base.child)


ABSENT = -1   # Episode.target_object of an instruction naming nothing in the frame: the right action is none


@dataclass(frozen=True)
class Episode:
    """One instruction and the grasp commanded for it, on one recorded frame."""

    episode_index: int
    frame_index: int
    task_index: int
    instruction: str
    grasp_position: tuple[float, float, float]   # TCP at the grasp, base frame, metres
    grasp_yaw: float                             # radians; the fingers close along (-sin yaw, cos yaw, 0)
    grasp_width: float                           # opening before closing, metres
    target_object: int | None = None             # index into the frame's objects, when known (simulation);
                                                 # ABSENT: the named object is not there (grasp fields unused)
    success: bool | None = None                  # the executed outcome; None when not executed
    extra: dict = field(default_factory=dict)    # e.g. scene seed, paraphrase template, expert name

    @property
    def grasp(self) -> tuple[np.ndarray, float, float]:
        return np.asarray(self.grasp_position, np.float64), self.grasp_yaw, self.grasp_width


def _png(image: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise DatasetError(f"could not PNG-encode an image of shape {image.shape} and dtype {image.dtype}")
    return data.reshape(-1).copy()


def _unpng(data: np.ndarray) -> np.ndarray:
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError("a frame's PNG data does not decode")
    return image


def _frame_path(root: Path, index: int) -> Path:
    return root / "data" / f"chunk-{index // FRAMES_PER_CHUNK:03d}" / f"frame_{index:06d}.safetensors"


class DatasetWriter:
    """Writes a dataset at `root` (new, or appended to when append=True and it exists)."""

    def __init__(self, root: str | Path, source: str, base_frame: str = "base_link", append: bool = False,
                 description: str = ""):
        self.root = Path(root)
        self.base_frame = base_frame
        meta = self.root / "meta"
        if (meta / "info.json").exists() and not append:
            raise DatasetError(f"{self.root} already holds a dataset; choose another directory or append")
        meta.mkdir(parents=True, exist_ok=True)
        self.info = (json.loads((meta / "info.json").read_text()) if (meta / "info.json").exists() else
                     {"format": FORMAT, "version": VERSION, "source": source, "description": description,
                      "base_frame": base_frame, "units": {"position": "m", "yaw": "rad", "width": "m",
                                                          "depth": "mm (uint16 PNG)"},
                      "frames": 0, "episodes": 0, "tasks": 0})
        _check_info(self.info, self.root)
        self.tasks: dict[str, int] = {t["task"]: t["task_index"] for t in _jsonl(meta / "tasks.jsonl")}
        self._write_info()

    def add_frame(self, frame: RecordedFrame) -> int:
        index = self.info["frames"]
        depth_mm = np.nan_to_num(frame.depth_m, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0
        depth_mm = np.clip(np.round(depth_mm), 0, 65535).astype(np.uint16)
        k = frame.intrinsics
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = frame.camera_to_base.rotation, frame.camera_to_base.translation
        path = _frame_path(self.root, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"rgb": _png(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)), "depth": _png(depth_mm),
                   "labels": _png(frame.labels.astype(np.uint16)),
                   "K": np.array([k.fx, k.fy, k.cx, k.cy], np.float64), "camera_to_base": pose},
                  str(path), metadata={"objects": json.dumps(list(frame.objects)),
                                       "camera_frame": frame.camera_to_base.child,
                                       "base_frame": frame.camera_to_base.parent, "stamp_ns": str(frame.stamp_ns)})
        self.info["frames"] = index + 1
        return index

    def add_episode(self, frame_index: int, instruction: str, grasp: Grasp, target_object: int | None = None,
                    success: bool | None = None, extra: dict | None = None) -> Episode:
        if not 0 <= frame_index < self.info["frames"]:
            raise DatasetError(f"frame {frame_index} has not been written")
        if grasp.frame != self.base_frame:
            raise DatasetError(f"grasp is in {grasp.frame!r}, the dataset's actions are in {self.base_frame!r}")
        if not instruction.strip():
            raise DatasetError("an episode needs an instruction")
        values = [*grasp.position, grasp.yaw, grasp.width]
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"non-finite grasp {values}")
        task = self.tasks.get(instruction)
        if task is None:
            task = self.tasks[instruction] = len(self.tasks)
            _append(self.root / "meta" / "tasks.jsonl", {"task_index": task, "task": instruction})
        episode = Episode(self.info["episodes"], frame_index, task, instruction,
                          tuple(float(v) for v in grasp.position), float(grasp.yaw), float(grasp.width),
                          target_object, success, dict(extra or {}))
        _append(self.root / "meta" / "episodes.jsonl", asdict(episode))
        self.info["episodes"] += 1
        self.info["tasks"] = len(self.tasks)
        return episode

    def add_absent(self, frame_index: int, instruction: str, extra: dict | None = None) -> Episode:
        """An instruction naming an object that is not in the frame: the demonstrated action is to refuse."""
        nothing = Grasp(np.zeros(3), np.array([0.0, 0.0, -1.0]), 0.0, 0.0, 0.0, "", self.base_frame)
        return self.add_episode(frame_index, instruction, nothing, ABSENT, extra=extra)

    def _write_info(self) -> None:
        (self.root / "meta" / "info.json").write_text(json.dumps(self.info, indent=2))

    def close(self) -> None:
        self._write_info()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Dataset:
    """Reads a dataset written by DatasetWriter."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"{self.root} is not a dataset (no meta/info.json)")
        self.info = json.loads(info_path.read_text())
        _check_info(self.info, self.root)
        self.episodes = [Episode(**e) for e in _jsonl(self.root / "meta" / "episodes.jsonl")]
        # episodes.jsonl is appended line by line: trust it over counts in info.json from an unclean stop
        self.num_frames = sum(1 for _ in (self.root / "data").glob("chunk-*/frame_*.safetensors"))

    def __len__(self) -> int:
        return len(self.episodes)

    def frame(self, index: int) -> RecordedFrame:
        path = _frame_path(self.root, index)
        if not path.is_file():
            raise DatasetError(f"{path} is missing")
        with safe_open(str(path), "numpy") as f:
            meta = f.metadata()
        data = load_file(str(path))
        labels = _unpng(data["labels"]).astype(np.int32)
        h, w = labels.shape
        fx, fy, cx, cy = data["K"].tolist()
        pose = data["camera_to_base"]
        return RecordedFrame(cv2.cvtColor(_unpng(data["rgb"]), cv2.COLOR_BGR2RGB),
                             _unpng(data["depth"]).astype(np.float32) / 1000.0, labels,
                             tuple(json.loads(meta["objects"])), CameraIntrinsics(fx, fy, cx, cy, w, h),
                             RigidTransform(pose[:3, :3].copy(), pose[:3, 3].copy(), meta["base_frame"],
                                            meta["camera_frame"]), int(meta["stamp_ns"]))

    def rgb(self, index: int) -> np.ndarray:
        """The (H, W, 3) uint8 colour image of a frame alone (no depth or labels decoded)."""
        path = _frame_path(self.root, index)
        if not path.is_file():
            raise DatasetError(f"{path} is missing")
        with safe_open(str(path), "numpy") as f:
            if "rgb" not in f.keys():
                raise DatasetError(f"{path} holds no rgb image")
            data = f.get_tensor("rgb")
        return cv2.cvtColor(_unpng(data), cv2.COLOR_BGR2RGB)

    def frames(self) -> Iterator[tuple[int, RecordedFrame]]:
        for index in range(self.num_frames):
            yield index, self.frame(index)


def _check_info(info: dict, root: Path) -> None:
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise DatasetError(f"{root}: format {info.get('format')!r} v{info.get('version')}, this reader knows "
                           f"{FORMAT!r} v{VERSION}")


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
