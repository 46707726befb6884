"""Rotations as ROS messages carry them (quaternion x, y, z, w) <-> rotation matrices, and the static
extrinsic parameter (x, y, z, qx, qy, qz, qw) <-> RigidTransform."""
from __future__ import annotations

import numpy as np

from dino_vla.types import RigidTransform


def matrix_from_quaternion(xyzw) -> np.ndarray:
    x, y, z, w = np.asarray(xyzw, np.float64)
    n = x * x + y * y + z * z + w * w
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"not a rotation quaternion (x, y, z, w): {tuple(xyzw)}")
    s = 2.0 / n  # normalises on the way: hand-typed calibrations are rarely unit length
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)]])


def quaternion_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """(x, y, z, w) with w >= 0 of a proper rotation matrix (Shepperd's method: stable for every angle)."""
    m = np.asarray(rotation, np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = np.empty(4)
        q[i], q[j], q[k] = s / 4, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def transform_from_pose(pose: tuple[float, ...], parent: str, child: str) -> RigidTransform:
    """The extrinsic parameter (x, y, z, qx, qy, qz, qw): pose of `child` in `parent`."""
    if len(pose) != 7:
        raise ValueError(f"expected x, y, z, qx, qy, qz, qw; got {len(pose)} numbers")
    return RigidTransform(matrix_from_quaternion(pose[3:]), np.asarray(pose[:3], np.float64), parent, child)


def pose_from_transform(transform: RigidTransform) -> tuple[float, ...]:
    return tuple(float(v) for v in (*transform.translation, *quaternion_from_matrix(transform.rotation)))
