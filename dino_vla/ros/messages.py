"""Pipeline dataclasses <-> dino_vla messages. Field meanings are documented in msg/."""
from __future__ import annotations

import copy

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from dino_vla.geometry.transforms import matrix_from_quaternion, quaternion_from_matrix
from dino_vla.msg import Detection, DetectionArray, DinoFeatures, GraspCommand, SegmentationMasks
from dino_vla.ros.conversions import ImageConversionError, image_to_numpy, numpy_to_image
from dino_vla.types import DETECTED, TRACKED, CameraIntrinsics, Detections, Features, Grasp, Masks, Object3D, Provenance


def _detection(header: Header, index: int, box: np.ndarray, phrase: str, score: float) -> Detection:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Detection(header=header, id=str(index), class_id=phrase, score=float(score),
                     center_x=(x0 + x1) / 2, center_y=(y0 + y1) / 2, size_x=x1 - x0, size_y=y1 - y0)


def detections_to_msg(header: Header, detections: Detections, instruction: str = "",
                      provenance: Provenance | None = None) -> DetectionArray:
    """provenance None: detected on this image (every source but a tracking detector)."""
    msg = DetectionArray(header=header, instruction=instruction, detections=[
        _detection(header, i, detections.boxes[i], detections.phrases[i], detections.scores[i])
        for i in range(len(detections))])
    if provenance is None:
        msg.provenance, msg.detection_stamp, msg.tracking_confidence = DETECTED, header.stamp, 1.0
    else:
        msg.provenance, msg.frames_since_detection = provenance.kind, provenance.frames_since_detection
        msg.tracking_confidence = provenance.confidence
        msg.detection_age_s, msg.detection_stamp = provenance.detection_age_s, _time(provenance.detection_stamp_ns)
    return msg


def provenance_from_msg(msg: DetectionArray) -> Provenance:
    """What the message says about its detections' origin. Anything not marked tracked (publishers that predate
    the field leave it empty) was detected on its own image."""
    stamp = stamp_ns(msg.header)
    if msg.provenance != TRACKED:
        return Provenance(DETECTED, 0, stamp, stamp)
    detected = msg.detection_stamp.sec * 1_000_000_000 + msg.detection_stamp.nanosec
    return Provenance(TRACKED, msg.frames_since_detection, detected, stamp, msg.tracking_confidence)


def _time(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def detections_from_msg(msg: DetectionArray, image_size: tuple[int, int]) -> Detections:
    boxes = np.array([[d.center_x - d.size_x / 2, d.center_y - d.size_y / 2,
                       d.center_x + d.size_x / 2, d.center_y + d.size_y / 2] for d in msg.detections],
                     np.float32).reshape(-1, 4)
    return Detections(boxes, np.array([d.score for d in msg.detections], np.float32),
                      tuple(d.class_id for d in msg.detections), image_size)


def masks_to_msg(header: Header, detections_msg: DetectionArray, detections: Detections, masks: Masks,
                 source: str) -> SegmentationMasks:
    labels = masks.label_image(detections.scores)
    encoding = "mono8" if labels.dtype == np.uint8 else "16UC1"
    return SegmentationMasks(header=header, labels=numpy_to_image(labels, encoding, header),
                             detections=list(detections_msg.detections),
                             mask_scores=masks.scores.astype(np.float32).tolist(), colours=list(masks.colours),
                             source=source, instruction=detections_msg.instruction,
                             provenance=detections_msg.provenance,
                             frames_since_detection=detections_msg.frames_since_detection,
                             tracking_confidence=detections_msg.tracking_confidence,
                             detection_age_s=detections_msg.detection_age_s,
                             detection_stamp=detections_msg.detection_stamp)


def masks_from_msg(msg: SegmentationMasks) -> tuple[Detections, Masks]:
    """The label image back to one boolean mask per detection (pixels lost to a higher-scoring
    overlapping detection stay with that one, as published)."""
    labels = image_to_numpy(msg.labels)
    if labels.ndim != 2:
        raise ImageConversionError(f"mask label image must have one channel, got {msg.labels.encoding}")
    detections = detections_from_msg(DetectionArray(detections=msg.detections), labels.shape)
    n = len(detections)
    masks = labels[None] == np.arange(1, n + 1, dtype=labels.dtype)[:, None, None]
    scores = np.asarray(msg.mask_scores, np.float32)
    if scores.shape != (n,):
        scores = np.ones(n, np.float32)
    colours = tuple(msg.colours) if len(msg.colours) == n else ()
    return detections, Masks(masks, scores, colours)


def intrinsics_from_msg(msg: CameraInfo) -> CameraIntrinsics:
    """K of a CameraInfo; aligned depth from RGB-D drivers is rectified, so distortion is not applied.
    CameraIntrinsics refuses a K that cannot project (zero or non-finite focal lengths, no size)."""
    fx, _, cx, _, fy, cy = msg.k[:6]
    return CameraIntrinsics(float(fx), float(fy), float(cx), float(cy), int(msg.width), int(msg.height))


def camera_info_msg(header: Header, k: CameraIntrinsics) -> CameraInfo:
    return CameraInfo(header=header, width=k.width, height=k.height, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=[k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def stamp_ns(header: Header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def objects_to_msg(header: Header, objects: list[tuple[Detection, Object3D]], instruction: str = ""
                   ) -> DetectionArray:
    """3D detections in header.frame_id: each keeps its 2D box (pixels of the source image) and gains
    the object's oriented box as pose + size."""
    out = []
    for source, obj in objects:
        d = copy.copy(source)
        d.header, d.has_pose = header, True
        d.pose = pose_msg(obj.centroid, obj.rotation)
        d.size = Vector3(x=float(obj.extent[0]), y=float(obj.extent[1]), z=float(obj.extent[2]))
        out.append(d)
    return DetectionArray(header=header, instruction=instruction, detections=out)


def pose_msg(position: np.ndarray, rotation: np.ndarray) -> Pose:
    x, y, z, w = quaternion_from_matrix(rotation)
    return Pose(position=Point(x=float(position[0]), y=float(position[1]), z=float(position[2])),
                orientation=Quaternion(x=float(x), y=float(y), z=float(z), w=float(w)))


def cloud_to_msg(header: Header, points: np.ndarray) -> PointCloud2:
    """An unorganised x, y, z float32 cloud."""
    pts = np.ascontiguousarray(points, np.float32).reshape(-1, 3)
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    return PointCloud2(header=header, height=1, width=len(pts), fields=fields, is_bigendian=False,
                       point_step=12, row_step=12 * len(pts), data=pts.tobytes(), is_dense=True)


def cloud_from_msg(msg: PointCloud2) -> np.ndarray:
    """x, y, z of a float32 cloud whose first three fields are x, y, z (as cloud_to_msg writes)."""
    names = [f.name for f in msg.fields[:3]]
    if names != ["x", "y", "z"] or any(f.datatype != PointField.FLOAT32 for f in msg.fields[:3]):
        raise ValueError(f"expected float32 x, y, z fields first, got {names}")
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(-1, msg.point_step)
    return raw[:, :12].copy().view(np.float32).reshape(-1, 3)


def markers_msg(header: Header, objects: list[tuple[Detection, Object3D]], lifetime_s: float = 1.0
                ) -> MarkerArray:
    """An oriented box and a label per object, for RViz; DELETEALL first so vanished objects disappear."""
    out = [Marker(header=header, action=Marker.DELETEALL)]
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    for i, (source, obj) in enumerate(objects):
        box = Marker(header=header, ns="objects", id=i, type=Marker.CUBE, action=Marker.ADD,
                     pose=pose_msg(obj.centroid, obj.rotation), lifetime=life,
                     scale=Vector3(x=float(obj.extent[0]), y=float(obj.extent[1]), z=float(obj.extent[2])),
                     color=ColorRGBA(r=0.1, g=0.8, b=0.2, a=0.5))
        label = Marker(header=header, ns="labels", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                       pose=pose_msg(obj.centroid + [0, 0, obj.extent.max() / 2 + 0.03], np.eye(3)),
                       lifetime=life, scale=Vector3(z=0.03), color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                       text=f"{source.class_id} {source.score:.2f}")
        out += [box, label]
    return MarkerArray(markers=out)


def grasp_rotation(grasp: Grasp) -> np.ndarray:
    """Orientation of the tool frame: z along the approach, y along the fingers' closing axis."""
    z = np.asarray(grasp.approach, np.float64)
    y = np.array([-np.sin(grasp.yaw), np.cos(grasp.yaw), 0.0])
    y -= z * (y @ z)
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z], axis=1)


def grasp_to_msg(header: Header, grasp: Grasp, dry_run: bool, instruction: str = "", source: str = ""
                 ) -> GraspCommand:
    if header.frame_id != grasp.frame:
        raise ValueError(f"grasp is in {grasp.frame!r}, header says {header.frame_id!r}")
    a = grasp.approach
    return GraspCommand(header=header, command=GraspCommand.GRASP,
                        grasp_pose=pose_msg(grasp.position, grasp_rotation(grasp)),
                        approach=Vector3(x=float(a[0]), y=float(a[1]), z=float(a[2])),
                        gripper_width=float(grasp.width), score=float(grasp.score), object_class=grasp.phrase,
                        dry_run=dry_run, instruction=instruction, source=source)


def grasp_from_msg(msg: GraspCommand) -> Grasp:
    """ValueError for a command that is not a pose: a zero or non-finite quaternion, non-finite numbers."""
    q = msg.grasp_pose.orientation
    closing = matrix_from_quaternion((q.x, q.y, q.z, q.w))[:, 1]
    p, a = msg.grasp_pose.position, msg.approach
    grasp = Grasp(position=np.array([p.x, p.y, p.z]), approach=np.array([a.x, a.y, a.z]),
                  yaw=float(np.arctan2(-closing[0], closing[1])), width=msg.gripper_width, score=msg.score,
                  phrase=msg.object_class, frame=msg.header.frame_id)
    grasp.check()
    return grasp


def features_to_msg(header: Header, features: Features) -> DinoFeatures:
    rows, cols = features.grid
    return DinoFeatures(header=header, model=features.model, dim=features.dim,
                        patch_size=features.patch_size, grid_rows=rows, grid_cols=cols,
                        input_height=features.input_size[0], input_width=features.input_size[1],
                        cls=features.cls.astype(np.float32), patch_tokens=features.patch_tokens.astype(
                            np.float32).reshape(-1))


def features_from_msg(msg: DinoFeatures) -> Features:
    tokens = np.asarray(msg.patch_tokens, np.float32).reshape(msg.grid_rows, msg.grid_cols, msg.dim)
    return Features(cls=np.asarray(msg.cls, np.float32), patch_tokens=tokens, patch_size=msg.patch_size,
                    input_size=(msg.input_height, msg.input_width), model=msg.model)
