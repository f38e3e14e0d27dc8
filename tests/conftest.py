import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tasks.cartoon.schema import format_attribute_csv  # noqa: E402

SMALL_ATTRIBUTES = (("hair", 5), ("face_color", 3), ("glasses", 2))


def write_cartoon(folder: Path, key: str, indices, attributes=SMALL_ATTRIBUTES, size=500, seed=0) -> None:
    """One csX.png (random RGBA blob on transparent) + csX.csv in Cartoon Set's format."""
    rng = np.random.default_rng(seed)
    rgba = np.zeros((size, size, 4), np.uint8)
    c = size // 2
    rgba[c - 100:c + 100, c - 100:c + 100, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    rgba[c - 100:c + 100, c - 100:c + 100, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / f"{key}.png")
    rows = [(name, int(i), count) for (name, count), i in zip(attributes, indices)]
    (folder / f"{key}.csv").write_text(format_attribute_csv(rows))


@pytest.fixture
def cartoon_dir(tmp_path):
    """A 40-image Cartoon Set-format folder with a 3-attribute schema."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(40):
        write_cartoon(raw, f"cs{i}", [i % 5, i % 3, i % 2], seed=i)
    return raw
