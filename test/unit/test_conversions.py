import array
import sys

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from dino_vla.geometry import depth_to_metres
from dino_vla.ros.conversions import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    depth_image,
    image_to_numpy,
    image_to_rgb,
    numpy_to_image,
)

RNG = np.random.default_rng(0)
# (encoding, dtype, per-pixel shape suffix)
CASES = [
    ("rgb8", np.uint8, (3,)),
    ("bgr8", np.uint8, (3,)),
    ("mono8", np.uint8, ()),
    ("16UC1", np.uint16, ()),
    ("mono16", np.uint16, ()),
    ("32FC1", np.float32, ()),
]


def random_array(dtype, shape):
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def raw_msg(encoding, height, width, step, data, is_bigendian=0):
    msg = Image(height=height, width=width, encoding=encoding, step=step,
                is_bigendian=is_bigendian)
    msg.data = array.array("B", bytes(data))
    return msg


def test_supported_encodings():
    assert SUPPORTED_ENCODINGS == ("rgb8", "bgr8", "mono8", "16UC1", "32FC1")
    assert issubclass(ImageConversionError, ValueError)


@pytest.mark.parametrize("encoding,dtype,suffix", CASES)
@pytest.mark.parametrize("height,width", [(1, 1), (7, 5), (480, 640), (3, 641)])
def test_round_trip(encoding, dtype, suffix, height, width):
    arr = random_array(dtype, (height, width) + suffix)
    msg = numpy_to_image(arr, encoding)
    bpp = np.dtype(dtype).itemsize * (suffix[0] if suffix else 1)
    assert (msg.height, msg.width, msg.encoding) == (height, width, encoding)
    assert msg.step == width * bpp and len(msg.data) == msg.step * height
    assert msg.is_bigendian == int(sys.byteorder == "big")
    back = image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_single_channel_accepts_trailing_axis():
    arr = random_array(np.uint16, (4, 3, 1))
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(arr, "16UC1")), arr[..., 0])


def test_non_contiguous_and_byteswapped_input():
    arr = random_array(np.uint8, (6, 10, 3))[:, ::2]
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(arr, "rgb8")), arr)
    depth = random_array(np.float32, (4, 5))
    swapped = depth.astype(depth.dtype.newbyteorder("S"))
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(swapped, "32FC1")), depth)


@pytest.mark.parametrize("encoding,dtype,suffix", CASES)
def test_step_padding_dropped(encoding, dtype, suffix):
    height, width, pad = 3, 5, 7  # odd pad: rows of wide types start unaligned
    arr = random_array(dtype, (height, width) + suffix)
    row = arr.reshape(height, -1).view(np.uint8).reshape(height, -1)
    padded = np.concatenate([row, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    msg = raw_msg(encoding, height, width, row.shape[1] + pad, padded.tobytes(),
                  is_bigendian=int(sys.byteorder == "big"))
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_extra_trailing_data_ignored():
    arr = random_array(np.uint8, (2, 3))
    msg = raw_msg("mono8", 2, 3, 3, arr.tobytes() + b"\x00" * 5)
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_big_endian_16uc1():
    values = np.array([[1, 258, 65535], [1500, 0, 4660]], np.uint16)
    msg = raw_msg("16UC1", 2, 3, 6, values.astype(">u2").tobytes(), is_bigendian=1)
    out = image_to_numpy(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    np.testing.assert_allclose(depth_to_metres(depth_image(msg))[0], [0.001, 0.258, 65.535], rtol=1e-6)


def test_big_endian_32fc1_with_padding():
    values = np.array([[1.5, -2.25], [np.inf, 1e-3]], np.float32)
    rows = [values[r].astype(">f4").tobytes() + b"\xff\xff" for r in range(2)]
    msg = raw_msg("32FC1", 2, 2, 10, b"".join(rows), is_bigendian=1)
    out = image_to_numpy(msg)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_little_endian_explicit():
    values = np.array([[1, 256]], np.uint16)
    msg = raw_msg("mono16", 1, 2, 4, values.astype("<u2").tobytes(), is_bigendian=0)
    np.testing.assert_array_equal(image_to_numpy(msg), values)


def test_bgr8_to_rgb_swaps_channels():
    bgr = random_array(np.uint8, (5, 7, 3))
    rgb = image_to_rgb(numpy_to_image(bgr, "bgr8"))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    # image_to_numpy keeps the channel order as sent
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(bgr, "bgr8")), bgr)


def test_rgb8_to_rgb_unchanged():
    rgb = random_array(np.uint8, (4, 3, 3))
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(rgb, "rgb8")), rgb)


def test_mono8_to_rgb_replicated():
    mono = random_array(np.uint8, (4, 9))
    rgb = image_to_rgb(numpy_to_image(mono, "mono8"))
    assert rgb.shape == (4, 9, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], mono)


def test_image_to_rgb_with_padding():
    bgr = random_array(np.uint8, (2, 3, 3))
    data = b"".join(bgr[r].tobytes() + b"\x00" for r in range(2))
    np.testing.assert_array_equal(image_to_rgb(raw_msg("bgr8", 2, 3, 10, data)), bgr[..., ::-1])


@pytest.mark.parametrize("encoding", ["16UC1", "mono16", "32FC1"])
def test_image_to_rgb_rejects_depth(encoding):
    dtype = np.float32 if encoding == "32FC1" else np.uint16
    with pytest.raises(ImageConversionError, match=encoding):
        image_to_rgb(numpy_to_image(np.zeros((2, 2), dtype), encoding))


@pytest.mark.parametrize("encoding", ["yuv422", "rgba16", "", "RGB8"])
@pytest.mark.parametrize("fn", [image_to_numpy, image_to_rgb])
def test_rejects_unsupported_encoding(fn, encoding):
    msg = raw_msg(encoding, 2, 2, 8, bytes(16))
    with pytest.raises(ImageConversionError, match="unsupported encoding") as exc:
        fn(msg)
    assert all(e in str(exc.value) for e in SUPPORTED_ENCODINGS)


@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (0, 0)])
def test_rejects_empty(height, width):
    with pytest.raises(ImageConversionError, match=f"width={width}, height={height}"):
        image_to_numpy(raw_msg("mono8", height, width, width, bytes(16)))


def test_rejects_short_data():
    msg = raw_msg("rgb8", 4, 3, 9, bytes(9 * 4 - 1))
    with pytest.raises(ImageConversionError, match=r"35 bytes, need step\*height = 9\*4 = 36"):
        image_to_numpy(msg)


def test_rejects_small_step():
    msg = raw_msg("16UC1", 2, 3, 5, bytes(64))
    with pytest.raises(ImageConversionError, match=r"step 5 .* = 3\*2 = 6"):
        image_to_numpy(msg)


@pytest.mark.parametrize(
    "arr,encoding,match",
    [
        (np.zeros((2, 2, 3), np.float32), "rgb8", "dtype uint8"),
        (np.zeros((2, 2), np.uint8), "rgb8", "shape"),
        (np.zeros((2, 2, 4), np.uint8), "bgr8", "shape"),
        (np.zeros((2, 2, 3), np.uint8), "mono8", "shape"),
        (np.zeros((2, 2), np.uint8), "16UC1", "dtype uint16"),
        (np.zeros((2, 2), np.int16), "16UC1", "dtype uint16"),
        (np.zeros((2, 2), np.float64), "32FC1", "dtype float32"),
        (np.zeros((2, 2), np.uint32), "32FC1", "dtype float32"),
        (np.zeros((2,), np.uint8), "mono8", "shape"),
        (np.zeros((0, 3), np.uint8), "mono8", "empty"),
        (np.zeros((2, 2), np.uint8), "yuv422", "unsupported encoding"),
        ([[1, 2]], "mono8", "numpy array"),
    ],
)
def test_numpy_to_image_rejects(arr, encoding, match):
    with pytest.raises(ImageConversionError, match=match):
        numpy_to_image(arr, encoding)


def test_depth_16uc1_to_metres():
    mm = np.array([[0, 1500], [1, 65535]], np.uint16)
    out = depth_to_metres(depth_image(numpy_to_image(mm, "16UC1")))
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert np.isnan(out[0, 0]) and out[0, 1] == np.float32(1.5)
    np.testing.assert_allclose(out[1], [0.001, 65.535], rtol=1e-6)


def test_depth_32fc1_to_metres():
    m = np.array([[np.inf, -np.inf, 0.0], [1.25, np.nan, 3.0]], np.float32)
    out = depth_to_metres(depth_image(numpy_to_image(m, "32FC1")))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(out), [[True, True, True], [False, True, False]])
    assert out[1, 0] == 1.25 and out[1, 2] == 3.0


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_depth_rejects_colour(encoding):
    arr = np.zeros((2, 2, 3) if encoding != "mono8" else (2, 2), np.uint8)
    with pytest.raises(ImageConversionError, match=encoding):
        depth_image(numpy_to_image(arr, encoding))


def test_header_copied():
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="camera_color_optical_frame")
    msg = numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8", header)
    assert msg.header == header and msg.header is not header
    header.frame_id, header.stamp.sec = "other", 99
    assert msg.header.frame_id == "camera_color_optical_frame" and msg.header.stamp.sec == 12
    assert numpy_to_image(np.zeros((2, 2), np.uint8), "mono8").header == Header()


@pytest.mark.parametrize("fn", [image_to_numpy, image_to_rgb])
def test_output_does_not_alias_message(fn):
    arr = random_array(np.uint8, (3, 4, 3))
    msg = numpy_to_image(arr, "rgb8")
    out = fn(msg)
    assert not np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    out[...] = 0
    np.testing.assert_array_equal(image_to_numpy(msg), arr)
    msg.data[0] ^= 0xFF
    assert out[0, 0, 0] == 0


def test_depth_does_not_alias_message():
    msg = numpy_to_image(np.full((2, 2), 1.0, np.float32), "32FC1")
    out = depth_to_metres(depth_image(msg))
    out[...] = 7.0
    np.testing.assert_array_equal(image_to_numpy(msg), 1.0)


def test_message_does_not_alias_input():
    arr = np.arange(1, 7, dtype=np.uint8).reshape(2, 3)
    msg = numpy_to_image(arr, "mono8")
    arr[...] = 0
    assert bytes(msg.data) == bytes(range(1, 7))
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"


def test_accepts_bytes_data():
    arr = random_array(np.uint16, (3, 5))
    msg = Image(height=3, width=5, encoding="16UC1", step=10, data=arr.tobytes(),
                is_bigendian=int(sys.byteorder == "big"))
    np.testing.assert_array_equal(image_to_numpy(msg), arr)
