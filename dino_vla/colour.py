"""The colour name of an object from the pixels under its mask: what lets "the red cup" pick one of several
cups whatever the detector's label says (an open-vocabulary detector prompted with "red cup" labels every cup
it finds "red cup").

Hue decides for coloured pixels, brightness for grey ones. The names are the ones people use for plain
painted objects; the bins are wide, so shading and dim light (which change brightness and saturation far
more than hue) do not move an object into its neighbour's bin."""
from __future__ import annotations

import cv2
import numpy as np

COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black")
# OpenCV hue (0..179, degrees / 2) bins, upper bounds exclusive; red wraps around 0
_HUE_BINS = ((8, "red"), (20, "orange"), (35, "yellow"), (90, "green"), (125, "blue"), (150, "purple"),
             (170, "pink"), (180, "red"))
MIN_SATURATION = 60          # of 255: below it a pixel is grey (white, black)
MIN_VALUE = 45               # of 255: below it hue is noise
CHROMATIC_SHARE = 0.4        # this share of a mask's pixels must be coloured for it to be called a colour
WHITE_VALUE = 70             # median brightness splitting white from black


def colour_name(rgb: np.ndarray, mask: np.ndarray) -> str:
    """The colour name of the (H, W, 3) uint8 RGB image's pixels under the (H, W) bool mask; "" for an empty
    mask."""
    return _colour_of(*(code[:, 0] for code in _pixel_codes(rgb[mask][:, None])))


def _pixel_codes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of an (H, W, 3) RGB image: its OpenCV hue (0..179) where it is coloured, else GREY; and its
    value (brightness)."""
    hsv = cv2.cvtColor(rgb.astype(np.uint8, copy=False), cv2.COLOR_RGB2HSV)
    coloured = (hsv[..., 1] >= MIN_SATURATION) & (hsv[..., 2] >= MIN_VALUE)
    return np.where(coloured, hsv[..., 0], GREY).astype(np.uint8), hsv[..., 2]


GREY = 255   # a hue code no colour has


def _colour_of(hues: np.ndarray, values: np.ndarray) -> str:
    """The colour name of pixels given by their hue codes and values; "" for none."""
    if len(hues) == 0:
        return ""
    counts = np.bincount(hues, minlength=256)
    if len(hues) - counts[GREY] < CHROMATIC_SHARE * len(hues):
        return "white" if np.median(values) >= WHITE_VALUE else "black"
    votes: dict[str, int] = {}
    lower = 0
    for upper, name in _HUE_BINS:
        votes[name] = votes.get(name, 0) + int(counts[lower:upper].sum())
        lower = upper
    return max(votes, key=votes.get)


def colour_names(rgb: np.ndarray, masks: np.ndarray) -> tuple[str, ...]:
    """colour_name of each of the (N, H, W) masks."""
    hues, values = _pixel_codes(rgb)   # once per image, not per mask
    return tuple(_colour_of(hues[m], values[m]) for m in masks)
