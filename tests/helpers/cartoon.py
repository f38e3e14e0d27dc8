"""Cartoon data for tests: Cartoon Set-format folders (png + csv), and shard images whose attributes
are plain colours; the tiny cartoon model's params."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.cartoon.schema import AttributeSchema, format_attribute_csv

SMALL_ATTRIBUTES = (("hair", 5), ("face_color", 3), ("glasses", 2))


def write_cartoon(folder: Path, key: str, indices, attributes=SMALL_ATTRIBUTES, size=500, seed=0) -> None:
    """One csX.png (random RGBA blob on transparent) + csX.csv in Cartoon Set's format."""
    rng = np.random.default_rng(seed)
    rgba = np.zeros((size, size, 4), np.uint8)
    c = size // 2
    rgba[c - 100 : c + 100, c - 100 : c + 100, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    rgba[c - 100 : c + 100, c - 100 : c + 100, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / f"{key}.png")
    rows = [(name, int(i), count) for (name, count), i in zip(attributes, indices)]
    (folder / f"{key}.csv").write_text(format_attribute_csv(rows))


COLOUR_SCHEMA = AttributeSchema(("hair_color", "face_color", "glasses"), (3, 2, 2))
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]


def colour_cartoon_png(attrs: list[int], rng: np.random.Generator) -> bytes:
    """A 16x16 PNG of COLOUR_SCHEMA attributes: hair colour on top, face colour below, a dark bar for glasses
    (colours a tiny classifier learns in a few steps)."""
    a = np.full((16, 16, 3), 255, np.uint8)
    a[:6] = COLOURS[attrs[0]]
    a[6:] = (240, 200, 160) if attrs[1] == 0 else (120, 80, 50)
    if attrs[2]:
        a[9:11, 3:13] = 0
    a = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# train_cartoon's `model` section at its smallest (both conditioning modes).
TINY_CARTOON_MODEL = {
    "block_out_channels": [8, 16],
    "norm_num_groups": 4,
    "cross_attention_dim": 8,
    "attention_head_dim": 4,
    "tau_hidden_dim": 16,
}
