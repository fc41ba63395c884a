"""Image decoding and resizing exactly as Caffe's `ReadImageToCVMat` does them with OpenCV.

Caffe (`io.cpp: ReadImageToCVMat`) calls `cv::imread(path, IMREAD_COLOR)` then, when a size is asked for,
`cv::resize(img, Size(w, h))` with the default INTER_LINEAR. So an image is:

* decoded by its *content* (a PNG behind a `.jpg` name decodes fine), to **BGR** uint8; grayscale files come
  out as 3 equal channels, CMYK JPEGs through OpenCV's own CMYK->BGR formula, EXIF orientation applied;
* squashed to (height, width) with bilinear interpolation, half-pixel centres, edge clamping and no
  antialiasing, in OpenCV's 11-bit fixed point.

OpenCV is optional (a test extra): when `cv2` imports we call it, which is Caffe's own code path; otherwise
Pillow decodes (libjpeg-turbo, the same decoder OpenCV bundles) and `resize_linear` below reproduces
`cv::resize`'s integer arithmetic bit for bit, so the two paths agree exactly on every golden image.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import ReproError

try:  # OpenCV is Caffe's own decoder; used when present.
    import cv2  # type: ignore

    cv2.setNumThreads(1)  # our loaders parallelise across images; OpenCV threads would oversubscribe
except ImportError:  # pragma: no cover - exercised by forcing backend="pil"
    cv2 = None

_COEF_BITS = 11  # OpenCV: INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


class ImageDecodeError(ReproError):
    """A file that is not a decodable image (the message says why)."""


def default_backend() -> str:
    return "cv2" if cv2 is not None else "pil"


# ---------------------------------------------------------------------------------------------- resize
def _linear_coeffs(src: int, dst: int):
    """Source index and fraction per destination index, as `cv::resize` computes them (`resizeGeneric`):
    float32 fx = (dx + 0.5) * scale - 0.5, with scale = 1 / (dst / src) in double."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    return s, f


def _fixed(w: np.ndarray) -> np.ndarray:
    # OpenCV: saturate_cast<short>(cbuf[k] * INTER_RESIZE_COEF_SCALE) rounds half to even (lrint).
    return np.rint(w * np.float32(_COEF_SCALE)).astype(np.int32)


def resize_linear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """`cv::resize(img, Size(width, height), 0, 0, INTER_LINEAR)` for uint8 H×W[×C], bit-exact.

    Horizontal pass (`HResizeLinear`): at the right/left edge the source column is clamped and its weight set
    to 1 (fx = 0); products are exact integers. Vertical pass: rows are clamped but keep their weights, and the
    two rows are combined as OpenCV's SIMD kernel `VResizeLinearVec_32s8u` does:
    ((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16), then (v + 2) >> 2 saturated to uint8.
    (An exact 2x shrink, which OpenCV routes to INTER_AREA, gives identical bytes with these weights.)
    """
    if img.dtype != np.uint8:
        raise TypeError(f"resize_linear takes uint8 images, got {img.dtype}")
    squeeze = img.ndim == 2
    src = img[:, :, None] if squeeze else img
    H, W, _ = src.shape
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive, got {height}x{width}")
    if (H, W) == (height, width):
        return img.copy()
    sx, fx = _linear_coeffs(W, width)
    lo = sx < 0
    fx[lo], sx[lo] = 0, 0
    hi = sx >= W - 1
    fx[hi], sx[hi] = 0, W - 1
    a0 = _fixed(np.float32(1) - fx)
    a1 = _fixed(fx)
    a0[hi], a1[hi] = _COEF_SCALE, 0  # HResizeLinear: D = S[W-1] * ONE beyond xmax
    sx1 = np.minimum(sx + 1, W - 1)

    sy, fy = _linear_coeffs(H, height)
    b0 = _fixed(np.float32(1) - fy)[:, None, None]
    b1 = _fixed(fy)[:, None, None]
    r0 = np.clip(sy, 0, H - 1)
    r1 = np.clip(sy + 1, 0, H - 1)

    def hpass(rows):  # horizontal pass only on the rows the vertical pass reads
        s = src[rows].astype(np.int32)
        return s[:, sx, :] * a0[None, :, None] + s[:, sx1, :] * a1[None, :, None]

    v = ((hpass(r0) >> 4) * b0 >> 16) + ((hpass(r1) >> 4) * b1 >> 16)
    out = np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)
    return out[:, :, 0] if squeeze else out


# ---------------------------------------------------------------------------------------------- checks
def jpeg_problem(data: bytes) -> str | None:
    """Why a JPEG stream is damaged (broken marker structure, or truncated), else None. No decoding.

    libjpeg only *warns* on a truncated file ("Premature end of JPEG file") and OpenCV returns the image with a
    grey bottom, so Caffe would silently train on it. Inside entropy-coded data every 0xFF is followed by 0x00
    or a restart marker, so an 0xFFD9 after the first SOS marker can only be the real end-of-image.
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return f"corrupt JPEG (no marker at byte {pos} of the header)"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # SOS: the scan starts after this segment
            if data.find(b"\xff\xd9", pos) < 0:
                return "truncated JPEG (no end-of-image marker after the scan data)"
            return None
        if marker == 0xD9:
            return "corrupt JPEG (end-of-image marker before any scan)"
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return "corrupt or truncated JPEG (a header segment runs past the end of the file)"


def check_image_bytes(data: bytes) -> str | None:
    """A reason string when the bytes cannot be a usable image, else None (no decode; cheap)."""
    if len(data) == 0:
        return "empty file (0 bytes)"
    if data[:2] == b"\xff\xd8":
        return jpeg_problem(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-64:]:
            return "truncated PNG (no IEND chunk)"
        return None
    return None  # other formats: the decoder decides


# ---------------------------------------------------------------------------------------------- decode
def _cmyk_to_bgr(raw: np.ndarray) -> np.ndarray:
    """OpenCV `icvCvt_CMYK2BGR_8u_C4C3R` on libjpeg's (Adobe-inverted) CMYK: x = k - ((255 - x) * k >> 8)."""
    raw = raw.astype(np.int32)
    k = raw[..., 3:4]
    cmy = k - (((255 - raw[..., :3]) * k) >> 8)
    return np.ascontiguousarray(cmy[..., ::-1]).astype(np.uint8)  # C,M,Y -> R,G,B slots; reversed = B,G,R


def _bgr_to_gray(bgr: np.ndarray) -> np.ndarray:
    # OpenCV cvtColor(BGR2GRAY) fixed point: (B*1868 + G*9617 + R*4899 + 2^13) >> 14
    b, g, r = (bgr[..., i].astype(np.int32) for i in range(3))
    return ((b * 1868 + g * 9617 + r * 4899 + (1 << 13)) >> 14).astype(np.uint8)


def _png_rgb_to_gray(bgr: np.ndarray) -> np.ndarray:
    # libpng png_do_rgb_to_gray as OpenCV's PNG decoder sets it up (png_set_rgb_to_gray(.., 0.299, 0.587)):
    # 15-bit coefficients 9797/19234/3737, truncated.
    b, g, r = (bgr[..., i].astype(np.int32) for i in range(3))
    return ((r * 9797 + g * 19234 + b * 3737) >> 15).astype(np.uint8)


def _decode_pil(data: bytes, color: bool | None) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        im = Image.open(io.BytesIO(data))
        if color is None:  # IMREAD_ANYCOLOR: gray files stay gray
            color = im.mode not in ("L", "1", "LA", "I;16", "I;16B", "I;16L", "I")
        fmt = im.format
        is_jpeg = fmt == "JPEG"
        rawmode = im.tile[0][3][0] if im.tile and isinstance(im.tile[0][3], tuple) else None
        if not color and is_jpeg and im.mode in ("RGB", "L"):
            im.draft("L", im.size)  # libjpeg's own grayscale output (the Y plane), as OpenCV asks for it
        im.load()
        im = ImageOps.exif_transpose(im)  # OpenCV applies EXIF orientation by default
    except Exception as e:  # Pillow raises many types for bad data; report one clear reason
        raise ImageDecodeError(f"cannot decode image ({type(e).__name__}: {e})") from None
    mode = im.mode
    if mode == "CMYK":
        cmyk = np.asarray(im)
        # Pillow reads Adobe CMYK JPEGs as "CMYK;I" (inverted on load); undo it so OpenCV's formula sees
        # libjpeg's raw values.
        raw = 255 - cmyk if rawmode == "CMYK;I" else cmyk
        bgr = _cmyk_to_bgr(raw)
        return bgr if color else _bgr_to_gray(bgr)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)  # libpng strip_16
        return np.repeat(arr[..., None], 3, axis=2) if color else arr
    if mode in ("L", "1", "LA"):
        gray = np.asarray(im.convert("L"))
        return np.repeat(gray[..., None], 3, axis=2) if color else gray
    bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
    if color:
        return bgr
    return _png_rgb_to_gray(bgr) if fmt == "PNG" else _bgr_to_gray(bgr)


def _decode_cv2(data: bytes, color: bool | None) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    flag = cv2.IMREAD_ANYCOLOR if color is None else cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    img = cv2.imdecode(buf, flag)
    if img is None:
        raise ImageDecodeError("cannot decode image (OpenCV imdecode returned nothing)")
    return img


def decode_image(data: bytes, color: bool | None = True, backend: str | None = None) -> np.ndarray:
    """Decode encoded image bytes to uint8 H×W×3 BGR (or H×W gray when color=False), like `cv::imdecode`.
    color=None is IMREAD_ANYCOLOR (Caffe's `DecodeDatumToCVMatNative`): gray files come out H×W.

    Raises ImageDecodeError (with the reason) for empty, truncated or undecodable data.
    """
    reason = check_image_bytes(data)
    if reason:
        raise ImageDecodeError(reason)
    backend = backend or default_backend()
    if backend == "cv2":
        if cv2 is None:
            raise RuntimeError("backend='cv2' asked for but OpenCV (cv2) is not installed")
        return _decode_cv2(data, color)
    if backend == "pil":
        return _decode_pil(data, color)
    raise ValueError(f"unknown image backend {backend!r} (expected 'cv2' or 'pil')")


def read_image(path: str | os.PathLike, height: int = 0, width: int = 0, color: bool = True,
               backend: str | None = None) -> np.ndarray:
    """Caffe's `ReadImageToCVMat(path, height, width, is_color)`: decode, then squash to height×width when both
    are > 0. Returns uint8 H×W×3 BGR (H×W when color=False)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except OSError as e:
        raise ImageDecodeError(f"cannot read file ({e.strerror or e})") from None
    img = decode_image(data, color=color, backend=backend)
    if height > 0 and width > 0:
        img = resize_linear(img, height, width)
    return img


def to_chw(img: np.ndarray) -> np.ndarray:
    """H×W×C (or H×W) -> C×H×W contiguous, the Datum layout (`CVMatToDatum`)."""
    if img.ndim == 2:
        return img[None]
    return np.ascontiguousarray(img.transpose(2, 0, 1))
