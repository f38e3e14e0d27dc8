"""The near-duplicate photo check of a photo folder (tasks/faces/fetch.py: difference hashes at most
`near_duplicate_bits` apart are duplicates), at its threshold exactly: photos whose 64-bit difference
hashes differ in exactly that many bits are duplicates, one more bit apart they are not."""

import numpy as np
import PIL.Image
import pytest

from tasks.faces.fetch import Duplicates, difference_hash, fetch_folder
from tests.helpers.configs import section

MAX_BITS = section("fetch_faces")["near_duplicate_bits"]  # the threshold the stages run with (6)


def photo_with_hash(bits: np.ndarray) -> PIL.Image.Image:
    """An RGB photo (90x80, grey) whose difference hash is `bits` (8x8 booleans, row-major, first bit
    most significant): each row steps up where a bit is set, down where not; 10x10 blocks, so the hash's
    box-averaged 9x8 thumbnail holds exactly these values."""
    steps = np.where(bits, 10, -10)
    grey = np.concatenate([np.full((8, 1), 128), 128 + np.cumsum(steps, axis=1)], axis=1).astype(np.uint8)
    big = np.kron(grey, np.ones((10, 10), np.uint8))
    return PIL.Image.fromarray(np.stack([big] * 3, axis=-1))


def two_photos(distance: int, seed: int = 0) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """Two different photos whose difference hashes are exactly `distance` bits apart."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (8, 8)).astype(bool)
    other = bits.copy()
    flipped = rng.choice(64, size=distance, replace=False)
    other.flat[flipped] = ~other.flat[flipped]
    a, b = photo_with_hash(bits), photo_with_hash(other)
    assert difference_hash(a) == int(np.packbits(bits).view(">u8")[0])  # the construction holds
    assert bin(difference_hash(a) ^ difference_hash(b)).count("1") == distance
    return a, b


@pytest.mark.parametrize("distance, duplicate", [(MAX_BITS, True), (MAX_BITS + 1, False)])
def test_photos_exactly_at_the_threshold_are_near_duplicates(distance, duplicate):
    a, b = two_photos(distance)
    seen = Duplicates(MAX_BITS, capacity=2)
    assert seen.check("a", a) is None
    reason = seen.check("b", b)
    if duplicate:
        assert reason == f"duplicate of a (near: difference hashes {MAX_BITS} of 64 bits apart)"
    else:
        assert reason is None


def test_a_folder_drops_the_photo_at_the_threshold_and_keeps_the_one_past_it(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    first, at_threshold = two_photos(MAX_BITS, seed=1)
    _, past_it = two_photos(MAX_BITS + 1, seed=1)  # same first photo (same seed), one more bit flipped
    first.save(src / "a.png")
    at_threshold.save(src / "b.png")
    past_it.save(src / "c.png")
    m = fetch_folder(src, tmp_path / "raw", near_duplicate_bits=MAX_BITS, val_fraction=0.0, log=lambda *_: None)
    assert m["rejected"] == [
        {"key": "b", "file": "b.png", "reason": f"duplicate of a (near: difference hashes {MAX_BITS} of 64 bits apart)"}
    ]
    assert m["counts"]["images"] == 2 and m["counts"]["duplicates"] == 1
