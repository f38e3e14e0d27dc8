"""Per-image work for Cartoon Set preprocessing. Runs in worker processes: Pillow and numpy only."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tasks.cartoon.schema import AttributeFileError, parse_attribute_csv

RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}


class Rejected(Exception):
    """An input that is skipped and recorded with this reason; never fatal on its own."""


def composite_crop_resize(
    image: Image.Image, background: tuple[int, int, int], crop: int, resolution: int, resample: str = "lanczos"
) -> Image.Image:
    """Alpha-composite onto `background`, centre-crop `crop` pixels, resize to `resolution`.

    Cropping first composites half the pixels for the same result. Pillow's resize filters widen
    their support when downscaling, so the resize is antialiased.
    """
    w, h = image.size
    if crop > min(w, h):
        raise Rejected(f"crop {crop} is larger than the image ({w}x{h})")
    left, top = (w - crop) // 2, (h - crop) // 2
    square = image.crop((left, top, left + crop, top + crop))
    if square.mode != "RGBA":
        square = square.convert("RGBA")
    # Pasting through the alpha channel onto an opaque RGB background gives alpha_composite's exact
    # bytes (checked for every colour and alpha value) without an RGBA canvas and a conversion.
    flat = Image.new("RGB", square.size, tuple(background))
    flat.paste(square, mask=square)
    return flat.resize((resolution, resolution), RESAMPLE[resample])


def load_image(path: str | Path, image_size: int | None) -> Image.Image:
    """Open and fully decode `path`, or raise Rejected with the reason."""
    try:
        image = Image.open(path)
        image.load()  # decodes everything now (truncation shows here) and closes the file
    except FileNotFoundError:
        raise Rejected("missing image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise Rejected(f"corrupt or truncated image: {exc}") from None
    if image_size and image.size != (image_size, image_size):
        raise Rejected(f"wrong image size {image.size[0]}x{image.size[1]}, expected {image_size}x{image_size}")
    return image


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # shards are small; level 1 is ~3x faster
    return buf.getvalue()


def read_attributes(csv_path: str) -> tuple[bool, object]:
    """(True, rows) or (False, reason) for one csX.csv; a worker-pool entry point."""
    try:
        text = Path(csv_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return False, "missing attribute csv"
    except (OSError, UnicodeDecodeError) as exc:
        return False, f"unreadable attribute csv: {exc}"
    try:
        return True, parse_attribute_csv(text)
    except AttributeFileError as exc:
        return False, f"malformed attribute csv: {exc}"


def prepare_image(job: tuple) -> tuple[bool, object]:
    """(True, png bytes) or (False, reason) for one image; a worker-pool entry point."""
    path, background, crop, resolution, resample, image_size = job
    try:
        image = load_image(path, image_size)
        out = composite_crop_resize(image, tuple(background), crop, resolution, resample)
        return True, encode_png(out)
    except Rejected as exc:
        return False, str(exc)
