"""NVlabs' FFHQ alignment (`recreate_aligned_images` in NVlabs/ffhq-dataset's download_ffhq.py).

The steps and their constants are the reference's, in its order, so the same landmarks and image
give the same pixels (checked against a verbatim copy in tests/data/test_faces_align.py and
benchmarks/bench_align.py). Two deliberate differences, neither of which changes the output of
an RGB input: Pillow >= 10 spells `ANTIALIAS` as `LANCZOS` (the same filter), and a non-RGB
input (grey, RGBA, palette) is converted to RGB first (the reference would fail on it).

Coordinates: a landmark (x, y) is a pixel centre (pixel (0, 0) has centre (0, 0)), which is why
the reference adds 0.5 before handing the quad to Pillow, whose pixel (0, 0) spans [0, 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image
import scipy.ndimage


class Quad(NamedTuple):
    """The oriented crop: corners (upper-left, lower-left, lower-right, upper-right), size, axes."""

    quad: np.ndarray  # (4, 2) float64
    qsize: float  # side of the square, in source pixels
    c0: np.ndarray  # centre
    x: np.ndarray  # half-side vector pointing right in the aligned image
    y: np.ndarray  # half-side vector pointing down in the aligned image


def _check_landmarks(landmarks) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be a (68, 2) array in dlib's 68-point layout, got shape {lm.shape}")
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks contain NaN or infinite values")
    return lm


def eye_mouth(landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left eye centre (mean of 36-41), right eye centre (42-47), mouth centre (mean of 48, 54)."""
    lm = _check_landmarks(landmarks)
    return lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), (lm[48] + lm[54]) * 0.5


def ffhq_quad(landmarks) -> Quad:
    """The reference's oriented crop rectangle for 68 landmarks (rotate_level=True)."""
    eye_left, eye_right, mouth_avg = eye_mouth(landmarks)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm == 0:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    x /= norm
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c0 = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c0 - x - y, c0 - x + y, c0 + x + y, c0 + x - y])
    return Quad(quad, float(np.hypot(*x) * 2), c0, x, y)


def aligned_position(points, landmarks, output_size: int) -> np.ndarray:
    """Where source points (pixel centres) land in the aligned image (pixel centres).

    The quad maps affinely onto the output square: upper-left corner -> (0, 0), `2x` -> the
    full width, `2y` -> the full height; continuous coordinates there are scaled to the output
    and shifted back by half a pixel.
    """
    q = ffhq_quad(landmarks)
    basis = np.stack([2 * q.x, 2 * q.y], axis=1)  # columns: the output's x and y axes in the source
    rel = np.atleast_2d(np.asarray(points, dtype=np.float64)) + 0.5 - (q.quad[0] + 0.5)
    st = np.linalg.solve(basis, rel.T).T
    return st * output_size - 0.5


def _as_rgb(image) -> PIL.Image.Image:
    if isinstance(image, (str, Path)):
        with PIL.Image.open(image) as im:
            im.load()
            image = im.copy() if im.mode == "RGB" else im.convert("RGB")
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"array images must be uint8, got {image.dtype}")
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"array images must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
        return PIL.Image.fromarray(image[..., :3], "RGB")
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    raise TypeError(f"image must be a PIL image, a uint8 array or a path, got {type(image).__name__}")


def align_face(
    image, landmarks, output_size: int, transform_size: int = 4096, enable_padding: bool = True
) -> PIL.Image.Image:
    """Crop, rotate and scale a face the way FFHQ was made.

    image: PIL image, HxWx3 uint8 array, or path. landmarks: (68, 2) array, dlib's layout, in
    that image's pixel coordinates. Returns an RGB image of output_size x output_size.
    transform_size is the resolution of the intermediate QUAD transform (the reference uses 4096;
    a smaller value is faster and, at output_size 256, barely different).
    """
    if output_size < 1 or transform_size < output_size:
        raise ValueError(f"need 1 <= output_size <= transform_size, got {output_size}, {transform_size}")
    q = ffhq_quad(landmarks)
    img = _as_rgb(image)
    quad, qsize = q.quad.copy(), q.qsize

    # Shrink: a face much larger than the output is first downsampled in one antialiased step.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, PIL.Image.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # Crop to the quad's bounding box plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad: where the quad leaves the image, reflect-pad, blur towards the edge and blend to the
    # median colour, so the out-of-image part is a soft continuation rather than a black corner.
    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
            1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]),
        )
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = PIL.Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]

    # Transform: the quad onto a transform_size square, then one antialiased resize.
    img = img.transform((transform_size, transform_size), PIL.Image.QUAD, (quad + 0.5).flatten(), PIL.Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), PIL.Image.LANCZOS)
    return img
