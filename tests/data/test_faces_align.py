"""align_face: identical to NVlabs' reference, and eyes/mouth land where the algorithm puts them."""

import numpy as np
import PIL.Image
import pytest

from benchmarks.bench_align import reference_align
from tasks.faces.align import align_face, aligned_position, ffhq_quad
from tasks.synthetic.faces import base_identity, draw_photo, face_shape

N = 256  # output size the targets are stated at


def known_face(size, centre, theta_deg, e=60.0, m=70.0):
    """Gray picture with a red disk at the left eye, green at the right eye, blue at the mouth,
    and 68 landmarks whose eye and mouth centres are exactly those disks."""
    theta = np.deg2rad(theta_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    # Face coordinates in pixels, eye midpoint at the origin, y down.
    pts = face_shape(base_identity(0, 0)) * [e, e]
    pts[36:42] += [-e / 2, 0] - pts[36:42].mean(0)
    pts[42:48] += [e / 2, 0] - pts[42:48].mean(0)
    pts[48], pts[54] = [-25, m], [25, m]
    lm = pts @ rot.T + centre
    arr = np.full((size, size, 3), 128.0)
    ys, xs = np.mgrid[0:size, 0:size]
    marks = ((lm[36:42].mean(0), (255, 0, 0)), (lm[42:48].mean(0), (0, 255, 0)), ((lm[48] + lm[54]) / 2, (0, 0, 255)))
    for (cx, cy), colour in marks:  # antialiased disks, symmetric about their exact centres
        cover = np.clip(5.0 + 0.5 - np.hypot(xs - cx, ys - cy), 0, 1)[..., None]
        arr = arr * (1 - cover) + np.array(colour) * cover
    return PIL.Image.fromarray(np.uint8(np.rint(arr))), lm, e, m


def centroid(a: np.ndarray, channel: int, near: np.ndarray, radius: int = 14) -> np.ndarray:
    """Centroid of one disk's colour within `radius` of `near` (reflect-padding near a border
    mirrors the disks further out: those copies are the algorithm's, not what is measured)."""
    a = a.astype(np.float64)
    other = a[..., 0] if channel != 0 else a[..., 1]
    w = np.clip(a[..., channel] - other - 20, 0, None)
    ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    w[np.hypot(xs - near[0], ys - near[1]) > radius] = 0
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize(
    "size,centre,theta,border",
    [
        (400, (200, 170), 0, False),  # centred, level
        (560, (330, 240), 25, False),  # off-centre, rotated
        (560, (250, 300), -30, False),  # rotated the other way
        (400, (95, 290), 15, True),  # near the left and bottom edges: the padding path
    ],
)
def test_eyes_and_mouth_land_where_the_algorithm_puts_them(size, centre, theta, border):
    img, lm, e, m = known_face(size, np.array(centre, float), theta)
    quad = ffhq_quad(lm).quad
    assert (quad.min() < 0 or quad.max() > size) == border
    out = np.asarray(align_face(img, lm, N, transform_size=1024))
    assert out.shape == (N, N, 3)
    # The algorithm, in closed form for this geometry (rotation-invariant): the crop half-side s,
    # centre 0.1 of the way from the eyes to the mouth, eyes level.
    s = max(2 * e, 1.8 * m)
    expect = {
        0: [0.5 - e / (4 * s), 0.5 - 0.1 * m / (2 * s)],
        1: [0.5 + e / (4 * s), 0.5 - 0.1 * m / (2 * s)],
        2: [0.5, 0.5 + 0.9 * m / (2 * s)],
    }
    for ch, (u, v) in expect.items():
        want = np.array([u, v]) * N - 0.5
        got = centroid(out, ch, want)
        assert np.abs(got - want).max() < 1.0, (ch, got, want)
    # aligned_position agrees with the closed form.
    eyes = aligned_position([lm[36:42].mean(0), lm[42:48].mean(0)], lm, N)
    np.testing.assert_allclose(eyes, [np.array(expect[0]) * N - 0.5, np.array(expect[1]) * N - 0.5], atol=1e-6)


@pytest.mark.parametrize("key", [0, 3])
def test_same_pixels_as_the_reference(tmp_path, key):
    photo = draw_photo(base_identity(0, key), key, size=240)
    path = tmp_path / "p.png"
    photo.image.save(path)
    for ts, pad in ((512, True), (256, False)):
        ours = np.asarray(align_face(path, photo.landmarks, 128, ts, pad))
        ref = np.asarray(reference_align(path, photo.landmarks.copy(), 128, ts, pad))
        assert np.array_equal(ours, ref)
    # The shrink path: a face much larger than the output.
    big = photo.image.resize((960, 960), PIL.Image.BICUBIC)
    big.save(path)
    lm = (photo.landmarks + 0.5) * 4 - 0.5
    assert np.array_equal(np.asarray(align_face(big, lm, 64, 256)), np.asarray(reference_align(path, lm, 64, 256)))


def test_bad_arguments_are_clear_errors():
    img = PIL.Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        align_face(img, np.zeros((5, 2)), 32)
    with pytest.raises(ValueError, match="degenerate"):
        align_face(img, np.zeros((68, 2)), 32)
    with pytest.raises(ValueError, match="transform_size"):
        align_face(img, draw_photo(base_identity(0, 0), 0, size=64).landmarks, 256, 128)
