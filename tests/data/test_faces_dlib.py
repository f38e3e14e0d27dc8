"""dlib landmarks on real photos shipped by packages -> aligned faces with level eyes."""

import numpy as np
import PIL.Image
import pytest

from tasks.faces.align import align_face, aligned_position
from tasks.faces.landmarks import DlibLandmarks, NoFace, pick_face


def photos():
    from matplotlib import cbook
    from skimage import data

    yield "astronaut", data.astronaut()
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        yield "grace_hopper", np.asarray(PIL.Image.open(f).convert("RGB"))


@pytest.fixture(scope="module")
def dlib_lm():
    return DlibLandmarks(upsample=1)


@pytest.mark.parametrize("name,rgb", list(photos()), ids=lambda v: v if isinstance(v, str) else "")
def test_dlib_then_align_gives_level_eyes(dlib_lm, name, rgb):
    lm = pick_face(dlib_lm(rgb), min_face_size=40)
    out = align_face(rgb, lm, 256, transform_size=1024)
    # Detect again on the aligned face: the eyes are level and where the algorithm put them.
    again = pick_face(dlib_lm(np.asarray(out)), min_face_size=40)
    left, right = again[36:42].mean(0), again[42:48].mean(0)
    assert abs(left[1] - right[1]) < 4, (name, left, right)
    want = aligned_position([lm[36:42].mean(0), lm[42:48].mean(0)], lm, 256)
    assert np.abs(np.stack([left, right]) - want).max() < 6, (name, again[36:48], want)


def test_no_face_and_tiny_face(dlib_lm):
    with pytest.raises(NoFace, match="no face"):
        pick_face(dlib_lm(np.full((120, 160, 3), 90, np.uint8)), 40)
    from skimage import data

    with pytest.raises(NoFace, match="too small"):
        pick_face(dlib_lm(data.astronaut()), min_face_size=400)
