"""Reading photos: EXIF orientation honoured, everything else rejected with a reason.

Pure Pillow + numpy (no prefect, no torch): imported by spawned worker processes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import PIL.Image
import PIL.ImageFile
import PIL.ImageOps

# A truncated file must fail loudly, never decode as a half-grey picture.
PIL.ImageFile.LOAD_TRUNCATED_IMAGES = False
# Photos are large but not absurd: refuse decompression bombs (Pillow warns at 89 Mpx by default).
MAX_PIXELS = 200_000_000


class BadImage(ValueError):
    """The file is not a usable image; the message is the reason recorded in the manifest."""


def load_rgb(path: str | Path) -> PIL.Image.Image:
    """Decode `path` fully, apply its EXIF orientation, return RGB. Raises BadImage with a reason."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as im:
                fmt = im.format
                if im.width * im.height > MAX_PIXELS:
                    raise BadImage(f"image too large: {im.width}x{im.height} pixels")
                im.load()
                img = PIL.ImageOps.exif_transpose(im)
    except BadImage:
        raise
    except PIL.UnidentifiedImageError:
        raise BadImage("not an image (Pillow cannot identify the file format)") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        PIL.Image.DecompressionBombWarning,
        PIL.Image.DecompressionBombError,
    ) as exc:
        raise BadImage(f"truncated or corrupt image: {type(exc).__name__}: {exc}") from None
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            flat = PIL.Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        else:
            img = img.convert("RGB")
    if min(img.size) < 8:
        raise BadImage(f"image too small: {img.width}x{img.height} ({fmt})")
    return img
