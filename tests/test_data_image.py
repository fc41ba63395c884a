"""Decoding and squashing exactly as Caffe's ReadImageToCVMat (cv::imread + cv::resize INTER_LINEAR)."""
import io

import numpy as np
import pytest
from PIL import Image

from repro.data import image
from repro.data.image import ImageDecodeError, decode_image, read_image, resize_linear, to_chw

G3_NAMES = ["land_500x375.jpg", "port_375x500.jpg", "square_300x300.jpg", "vga_640x480.jpg",
            "gray_320x240.jpg", "cmyk_400x300.jpg", "png_disguised_256x192.jpg"]


def _jpeg(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_g3_images_decode_and_resize_like_caffe(golden, backend):
    """Both decode paths give the exact Datum bytes Caffe's convert_imageset stored (max diff 0)."""
    if backend == "cv2":
        pytest.importorskip("cv2")
    g3 = golden / "g3"
    ref = np.load(g3 / "g3_lmdb_images.npz")
    names = [line.split()[0] for line in (g3 / "files.txt").read_text().splitlines()]
    assert names == G3_NAMES
    for i, name in enumerate(names):
        ours = to_chw(read_image(g3 / "images" / name, 256, 256, backend=backend))
        diff = np.abs(ours.astype(int) - ref["images"][i])
        assert diff.max() == 0, f"{name}: max diff {diff.max()}, mean {diff.mean():.4f}"


def test_resize_matches_opencv_bit_for_bit():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    sizes = [(375, 500, 256, 256), (500, 375, 256, 256), (480, 640, 256, 256), (192, 256, 256, 256),
             (512, 512, 256, 256), (10, 8, 5, 4), (7, 300, 64, 64), (1, 1, 3, 3), (63, 65, 227, 13)]
    sizes += [tuple(int(v) for v in rng.integers(1, 300, 4)) for _ in range(25)]
    for H, W, h, w in sizes:
        for C in (1, 3):
            img = rng.integers(0, 256, (H, W, C), dtype=np.uint8)
            ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, C)
            np.testing.assert_array_equal(resize_linear(img, h, w), ref, err_msg=f"{H}x{W} -> {h}x{w}, C={C}")
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear(gray, 17, 23), cv2.resize(gray, (23, 17)))


def test_grayscale_decode_matches_opencv(golden):
    cv2 = pytest.importorskip("cv2")
    for name in G3_NAMES:
        p = golden / "g3" / "images" / name
        ours = read_image(p, color=False, backend="pil")
        np.testing.assert_array_equal(ours, cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), err_msg=name)


def test_exif_orientation_applied_like_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :20] = (250, 10, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    p.write_bytes(_jpeg(arr, exif=exif.tobytes()))
    ours = read_image(p, backend="pil")
    assert ours.shape == (60, 40, 3)
    np.testing.assert_array_equal(ours, cv2.imread(str(p), cv2.IMREAD_COLOR))


def test_pil_path_is_the_default_without_opencv(monkeypatch, golden):
    monkeypatch.setattr(image, "cv2", None)
    assert image.default_backend() == "pil"
    ref = np.load(golden / "g3" / "g3_lmdb_images.npz")["images"][5]  # the CMYK JPEG
    ours = to_chw(read_image(golden / "g3" / "images" / "cmyk_400x300.jpg", 256, 256))
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_bad_bytes_raise_clear_errors(backend):
    if backend == "cv2":
        pytest.importorskip("cv2")
    good = _jpeg(np.full((32, 32, 3), 128, np.uint8))
    assert decode_image(good, backend=backend).shape == (32, 32, 3)
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"", backend=backend)
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_image(good[: len(good) // 2], backend=backend)
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_image(b"this is not an image at all" * 10, backend=backend)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated JPEG"):
        decode_image(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(200), backend=backend)
    with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
        decode_image(good[:20] + b"garbage!" * 30, backend=backend)
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode_image(png.getvalue()[:-20], backend=backend)


def test_progressive_jpeg_is_not_reported_truncated():
    rng = np.random.default_rng(1)
    data = _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), progressive=True)
    assert image.jpeg_problem(data) is None
    assert image.jpeg_problem(data[:-300]).startswith("truncated JPEG")
    assert "truncated JPEG" in image.jpeg_problem(data[:100])
