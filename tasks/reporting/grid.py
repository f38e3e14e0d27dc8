"""Sample grids for dvclive and evaluation pages: diffusers' `make_image_grid`, squared and padded."""

from __future__ import annotations

import math

from diffusers.utils import make_image_grid
from PIL import Image


def square_grid(images: list[Image.Image], scale: int = 1) -> Image.Image:
    """The images in a near-square grid (empty cells white), enlarged `scale` times without smoothing
    (at 16-64 px, smoothing hides exactly the detail a grid is looked at for)."""
    if not images:
        raise ValueError("square_grid needs at least one image")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    blank = Image.new("RGB", images[0].size, (255, 255, 255))
    grid = make_image_grid(list(images) + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale > 1 else grid
