"""A procedural avatar renderer that imitates Google's Cartoon Set (same 18 attributes, same counts).

No package ships Cartoon Set images and the machines here cannot download them, so the embedded
default and the tests draw their own: one 500x500 RGBA PNG plus one `csX.csv` per avatar, in the
real dataset's formats, so everything downstream reads them exactly as it would read the real set.

Pillow and numpy only: this module runs in spawned worker processes and must import fast.

Geometry is written in "crop units": the central 360x360 box of the 500x500 image (pixels 70..430),
which is what the preprocessing keeps before resizing to 64x64. Everything is drawn inside that box
(with a small margin) on a canvas supersampled `_SS` times, then reduced with a box filter over
premultiplied alpha (antialiasing) and pasted into a fully transparent image.

What each attribute draws (the names are Cartoon Set's; the looks are this module's own):
  face_shape 7, chin_length 3, face_color 11   the head outline, its lower length, the skin tone
  hair 111, hair_color 10                      style (see `HAIR_STYLES`), colour of hair, brows, beard
  eye_color 5, eye_slant 3 (how open), eye_angle 3 (tilt), eye_lid 2, eye_lashes 2
  eyebrow_shape 14 (curve), eyebrow_thickness 4, eyebrow_weight 2 (tapered+lighter / blunt+darker),
  eyebrow_width 3 (length), eye_eyebrow_distance 3
  facial_hair 15 (last = none), glasses 12 (last = none), glasses_color 7 (frame colour)
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tasks.cartoon.schema import format_attribute_csv

CARTOONSET_ATTRIBUTES: tuple[tuple[str, int], ...] = (
    ("eye_angle", 3),
    ("eye_lashes", 2),
    ("eye_lid", 2),
    ("chin_length", 3),
    ("eyebrow_weight", 2),
    ("eyebrow_shape", 14),
    ("eyebrow_thickness", 4),
    ("face_shape", 7),
    ("facial_hair", 15),
    ("hair", 111),
    ("eye_color", 5),
    ("face_color", 11),
    ("hair_color", 10),
    ("glasses", 12),
    ("glasses_color", 7),
    ("eye_slant", 3),
    ("eyebrow_width", 3),
    ("eye_eyebrow_distance", 3),
)
_COUNTS = dict(CARTOONSET_ATTRIBUTES)

# ---------------------------------------------------------------------------------------------
# Palettes. Chosen so any two entries of one palette are far apart in RGB (tested): the model
# sees these at 64x64, where only a colour's mean over a region survives.

FACE_COLORS = (  # seven skin tones, very light to very dark, then four cartoon tints
    (255, 231, 215),
    (226, 184, 148),
    (208, 126, 74),
    (152, 104, 90),
    (140, 68, 30),
    (84, 60, 52),
    (42, 22, 12),
    (140, 215, 130),
    (135, 175, 245),
    (205, 155, 235),
    (250, 220, 70),
)
HAIR_COLORS = (  # black, dark brown, brown, auburn, ginger, blonde, platinum, grey, blue, pink
    (22, 20, 24),
    (88, 54, 30),
    (156, 108, 62),
    (168, 44, 32),
    (238, 128, 40),
    (242, 212, 110),
    (245, 245, 238),
    (150, 150, 156),
    (40, 90, 220),
    (236, 100, 176),
)
EYE_COLORS = ((80, 45, 20), (50, 120, 225), (50, 165, 70), (140, 140, 150), (190, 120, 20))
GLASSES_COLORS = (
    (20, 20, 20),
    (210, 30, 40),
    (40, 80, 220),
    (30, 160, 70),
    (230, 190, 30),
    (235, 235, 235),
    (150, 60, 200),
)
_INK = (45, 30, 30, 255)  # outlines: eye rims, lashes, nose
_LIPS = (170, 60, 60, 255)
_LENS = (35, 35, 45, 255)  # sunglasses

# ---------------------------------------------------------------------------------------------
# Layout constants, in crop units (0..360).

_BOX = 360  # the central crop the preprocessing keeps, in 500-pixel units
_OFFSET = 70  # where that crop starts in the 500x500 image
_SS = 2  # supersampling factor
_MARGIN = 6  # nothing is drawn closer than this to the crop's edge
CX = 180.0  # the face's vertical axis
FACE_CY = 175.0  # face outline centre
EYE_Y = 185.0
EYE_DX = 48.0  # half the distance between the eyes
MOUTH_Y = 252.0
SKULL_CY, SKULL_RX, SKULL_RY = 165.0, 114.0, 106.0  # the ellipse hair caps hug

# face_shape -> (half width, top half height, bottom half height, top exponent, bottom exponent,
# jaw taper): superellipse halves; taper > 0 narrows the jaw towards the chin, < 0 widens it.
_FACE_SHAPES = (
    (100, 95, 112, 2.0, 2.0, 0.12),  # oval
    (108, 95, 104, 2.0, 2.0, 0.0),  # round
    (104, 95, 108, 2.6, 4.0, 0.04),  # square
    (106, 95, 116, 2.2, 1.8, 0.42),  # heart (pointed chin)
    (90, 98, 122, 2.0, 2.2, 0.10),  # long, narrow
    (96, 95, 108, 2.0, 3.2, -0.16),  # pear (wide jaw)
    (104, 95, 114, 1.45, 1.35, 0.0),  # diamond
)
_CHIN_EXTRA = (0.0, 13.0, 26.0)

# eye_slant -> (half width, half height, corner sharpness exponent): round, almond, narrow
_EYE_SHAPES = ((24.0, 21.0, 1.0), (27.0, 16.0, 1.5), (28.0, 10.5, 1.7))
_EYE_ANGLES = (-13.0, 0.0, 13.0)  # degrees, outer corner up is positive
_BROW_GAP = (14.0, 24.0, 34.0)  # eye_eyebrow_distance: eye top (fixed) to eyebrow centre line
_BROW_LEN = (36.0, 54.0, 72.0)  # eyebrow_width
_BROW_THICK = (4.0, 8.0, 12.0, 16.0)  # eyebrow_thickness

# eyebrow_shape -> (inner y, peak y, peak position 0..1, outer y, smooth?) in crop units; up is -.
_BROW_SHAPES = (
    (0, 0, 0.5, 0, False),  # straight
    (0, -8, 0.5, 0, True),  # gentle arch
    (4, -16, 0.5, 4, True),  # high arch
    (4, -15, 0.65, 8, False),  # peaked, angular
    (10, 0, 0.5, -10, False),  # rising (stern)
    (-10, 0, 0.5, 10, False),  # falling (worried)
    (3, -9, 0.25, 4, True),  # arch peaking near the nose
    (3, -10, 0.8, 2, True),  # arch peaking at the tail
    (10, -8, 0.6, -4, False),  # angry kink
    (-14, -10, 0.3, 10, True),  # worried arch
    (0, 0, 0.68, 10, False),  # flat with a dropped tail
    (10, -18, 0.5, 10, True),  # round, high
    (0, 0, 0.5, 0, "wave"),  # wavy
    (-6, 8, 0.5, -6, True),  # upside-down arch
)

# ---------------------------------------------------------------------------------------------
# Hair: 111 styles, built as distinct combinations (family, a, b). Index 0 is bald.

_FRINGES = ("high", "bangs", "part_left", "part_right", "middle")
_LENGTHS = ("short", "bob", "long")


def _hair_styles() -> tuple[tuple[str, str, str], ...]:
    styles = [("bald", "", "")]
    for family in ("smooth", "volume", "spiky", "curly"):  # 4 x 3 x 5 = 60
        for length in _LENGTHS:
            for fringe in _FRINGES:
                styles.append((family, length, fringe))
    for kind in ("bun", "twin_buns"):  # 10
        for fringe in _FRINGES:
            styles.append(("bun", kind, fringe))
    for side in ("left", "right"):  # 10
        for fringe in _FRINGES:
            styles.append(("ponytail", side, fringe))
    for length in ("medium", "long"):  # 6
        for fringe in ("high", "bangs", "middle"):
            styles.append(("pigtails", length, fringe))
    for size in ("small", "medium", "large"):  # 6
        for fringe in ("high", "bangs"):
            styles.append(("afro", size, fringe))
    for height in ("low", "medium", "tall"):  # 6
        for edge in ("smooth", "spiky"):
            styles.append(("mohawk", height, edge))
    for fringe in ("high", "straight", "peak"):  # 3
        styles.append(("buzz", fringe, ""))
    for kind in ("sides", "horseshoe_long", "tuft"):  # 3
        styles.append(("receding", kind, ""))
    for side in ("left", "right"):  # 6
        for height in ("low", "medium", "tall"):
            styles.append(("undercut", side, height))
    return tuple(styles)


HAIR_STYLES = _hair_styles()
assert len(HAIR_STYLES) == 111 and len(set(HAIR_STYLES)) == 111

# facial_hair: index 14 is none
_FACIAL_HAIR = (
    "stubble",
    "beard_short",
    "beard_medium",
    "beard_long",
    "goatee",
    "chin_strap",
    "mustache_thin",
    "mustache_thick",
    "handlebar",
    "mustache_goatee",
    "soul_patch",
    "mutton_chops",
    "chin_curtain",
    "horseshoe",
    None,
)
# glasses: index 11 is none
_GLASSES = (
    "round",
    "oval",
    "rectangle",
    "rounded",
    "cat_eye",
    "aviator",
    "browline",
    "hexagon",
    "small_round",
    "sun_round",
    "sun_square",
    None,
)


# ---------------------------------------------------------------------------------------------
# Public API


def sample_attributes(rng: np.random.Generator) -> dict[str, int]:
    """One attribute set, each attribute uniform over its variants."""
    return {name: int(rng.integers(count)) for name, count in CARTOONSET_ATTRIBUTES}


def validate_attributes(attrs: dict[str, int]) -> None:
    """ValueError naming the first missing, unknown or out-of-range attribute."""
    unknown = [k for k in attrs if k not in _COUNTS]
    if unknown:
        raise ValueError(f"unknown attribute {unknown[0]!r}")
    for name, count in CARTOONSET_ATTRIBUTES:
        if name not in attrs:
            raise ValueError(f"missing attribute {name!r}")
        value = attrs[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"attribute {name!r} must be an integer, got {value!r}")
        if not 0 <= value < count:
            raise ValueError(f"attribute {name!r} index {value} out of range 0..{count - 1}")


def render_avatar(attrs: dict[str, int], size: int = 500) -> Image.Image:
    """Draw one avatar: a `size` x `size` RGBA image, transparent background, antialiased."""
    crop, offset = _render_box(attrs, size)
    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    out.paste(crop, (offset, offset))
    return out


def _render_box(attrs: dict[str, int], size: int) -> tuple[Image.Image, int]:
    """The drawn box of a `size` avatar (RGBA; everything outside it is transparent) and where
    it sits in the image (the same offset on both axes)."""
    validate_attributes(attrs)
    if size < 50:
        raise ValueError(f"size must be at least 50, got {size}")
    scale = size / 500.0
    box = int(round(_BOX * scale))
    painter = _Painter(box * _SS, _SS * scale)
    _draw(painter, {k: int(v) for k, v in attrs.items()})
    # Box filter over premultiplied alpha (the antialiasing), then back to straight alpha: what
    # reduce() does to an RGBA image, minus its first conversion, as the canvas is already RGBa.
    return painter.image.reduce(_SS).convert("RGBA"), int(round(_OFFSET * scale))


def _encode_png(box: Image.Image, size: int, offset: int) -> bytes:
    """A `size` x `size` 8-bit RGBA PNG, transparent but for `box` at (offset, offset).

    Written here rather than by Pillow, whose PNG writer picks a filter per row by trying all
    five: ~4 of its ~5 ms per avatar, more than the drawing. Every row here is unfiltered, and
    deflate at level 1 still finds the flat colour runs: the same pixels, files ~15% smaller,
    ~2.5x faster to write and to decode. The file bytes depend on the zlib Python links against
    (the pixels do not).
    """
    rows = np.zeros((size, 1 + 4 * size), dtype=np.uint8)  # each row: filter type 0, then RGBA
    w, h = box.size
    rows[offset : offset + h, 1 + 4 * offset : 1 + 4 * (offset + w)] = np.asarray(box).reshape(h, 4 * w)
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA, not interlaced
    return b"".join(
        [
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows, 1)),
            _png_chunk(b"IEND", b""),
        ]
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def render_to_files(out_dir, index: int, seed: int) -> str:
    """Write `cs{index}.png` and `cs{index}.csv` into out_dir; deterministic for (seed, index).

    Each file goes to a temporary name first and is renamed into place, so a killed run never
    leaves a half-written file under the final name. Returns the key `cs{index}`.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    attrs = sample_attributes(rng)
    box, offset = _render_box(attrs, 500)
    png_bytes = _encode_png(box, 500, offset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = f"cs{index}"
    tmp_suffix = f".tmp-{os.getpid()}"

    png, png_tmp = out_dir / f"{key}.png", out_dir / f"{key}.png{tmp_suffix}"
    png_tmp.write_bytes(png_bytes)
    os.replace(png_tmp, png)

    rows = [(name, attrs[name], count) for name, count in CARTOONSET_ATTRIBUTES]
    csv, csv_tmp = out_dir / f"{key}.csv", out_dir / f"{key}.csv{tmp_suffix}"
    csv_tmp.write_text(format_attribute_csv(rows))
    os.replace(csv_tmp, csv)
    return key


# ---------------------------------------------------------------------------------------------
# Drawing primitives: crop units in, supersampled pixels out.


class _Painter:
    """Draws opaque shapes on a transparent canvas. Every ink is opaque and drawing replaces
    pixels, so each pixel is (0, 0, 0, 0) or has alpha 255, where premultiplied and straight alpha
    are the same bytes: the canvas is RGBa from the start, which spares reduce() a conversion of
    the whole supersampled canvas (the same pixels as drawing in RGBA and converting)."""

    def __init__(self, side: int, k: float):
        self.image = Image.new("RGBa", (side, side), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.k = k  # pixels per crop unit
        self.lo, self.hi = _MARGIN, _BOX - _MARGIN

    def _xy(self, pts) -> list[float]:
        """Pixel coordinates as a flat [x0, y0, x1, y1, ...] list (Pillow takes either form)."""
        # np.minimum/np.maximum: np.clip's values without its Python wrapper (~3 us a call here)
        a = np.minimum(np.maximum(np.asarray(pts, dtype=np.float64), self.lo), self.hi) * self.k
        return a.ravel().tolist()

    def poly(self, pts, fill, outline=None, width: float = 0):
        _check_opaque(fill, outline)
        w = max(1, int(round(width * self.k))) if outline is not None else 0
        self.draw.polygon(self._xy(pts), fill=fill, outline=outline, width=w)

    def line(self, pts, fill, width: float, joint="curve"):
        _check_opaque(fill)
        self.draw.line(self._xy(pts), fill=fill, width=max(1, int(round(width * self.k))), joint=joint)
        # round caps so thick strokes do not end square
        r = width / 2
        for x, y in (pts[0], pts[-1]):
            self.ellipse(x, y, r, r, fill)

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width: float = 0):
        _check_opaque(fill, outline)
        w = max(1, int(round(width * self.k))) if outline is not None else 0
        self.draw.ellipse(self._xy([(cx - rx, cy - ry), (cx + rx, cy + ry)]), fill=fill, outline=outline, width=w)


def _check_opaque(*inks) -> None:
    """The RGBa canvas is only right for opaque inks (see _Painter)."""
    for ink in inks:
        if ink is not None and ink[3] != 255:
            raise ValueError(f"the painter draws opaque colours only, got {ink}")


def _rgba(c, f: float = 1.0) -> tuple[int, int, int, int]:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)), 255)


def _mix(a, b, t: float) -> tuple[int, int, int, int]:
    return tuple(int(round(a[i] * (1 - t) + b[i] * t)) for i in range(3)) + (255,)


def _ellipse_pts(cx, cy, rx, ry, n=40, t0=0.0, t1=2 * math.pi) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _mirror(pts) -> np.ndarray:
    a = np.array(pts, dtype=np.float64)
    a[:, 0] = 2 * CX - a[:, 0]
    return a


def _rotate(pts, cx, cy, deg) -> np.ndarray:
    a = np.radians(deg)
    c, s = math.cos(a), math.sin(a)
    p = np.asarray(pts, dtype=np.float64) - (cx, cy)
    return np.stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c], axis=1) + (cx, cy)


def _clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of polygon `subject` inside convex polygon `clip`."""
    # Python floats, not numpy scalars: the same doubles and the same arithmetic, several times
    # cheaper per operation in the per-vertex loop below
    out = [tuple(p) for p in np.asarray(subject, dtype=np.float64).reshape(-1, 2).tolist()]
    # orientation of clip polygon
    area = np.sum(clip[:, 0] * np.roll(clip[:, 1], -1) - np.roll(clip[:, 0], -1) * clip[:, 1])
    sgn = 1.0 if area > 0 else -1.0
    a, b = clip, np.roll(clip, -1, axis=0)
    # Only the clip edges with a subject vertex outside can change the polygon: points made by
    # clipping lie on the subject's edges, so inside every half-plane that holds all its vertices.
    # One array operation finds them; the per-vertex loop below (the renderer's hottest code) then
    # runs on those few edges instead of all of the face outline's.
    p = np.asarray(subject, dtype=np.float64).reshape(-1, 2)
    sides = sgn * (
        (b[:, None, 0] - a[:, None, 0]) * (p[None, :, 1] - a[:, None, 1])
        - (b[:, None, 1] - a[:, None, 1]) * (p[None, :, 0] - a[:, None, 0])
    )
    for i in np.flatnonzero((sides < 0).any(axis=1)):
        (ax, ay), (bx, by) = a[i].tolist(), b[i].tolist()
        inp, out = out, []
        if not inp:
            break

        def side(p):
            return sgn * ((bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax))

        prev = inp[-1]
        sp = side(prev)
        for cur in inp:
            sc = side(cur)
            if sc >= 0:
                if sp < 0:
                    t = sp / (sp - sc)
                    out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
                out.append(cur)
            elif sp >= 0:
                t = sp / (sp - sc)
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            prev, sp = cur, sc
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _thick_curve(pts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """A closed outline around a polyline with a per-point width."""
    d = np.gradient(pts, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1) * (widths[:, None] / 2)
    return np.concatenate([pts + nrm, (pts - nrm)[::-1]])


# ---------------------------------------------------------------------------------------------
# The avatar


def _face_outline(shape: int, chin: int, n: int = 64) -> np.ndarray:
    rx, rt, rb, nt, nb, taper = _FACE_SHAPES[shape]
    rb = rb + _CHIN_EXTRA[chin]
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    lower = s > 0  # image y grows downwards
    ex = np.where(lower, 2 / nb, 2 / nt)
    x = rx * np.sign(c) * np.abs(c) ** ex
    y = np.where(lower, rb, rt) * np.sign(s) * np.abs(s) ** ex
    x = x * np.where(lower, 1 - taper * np.abs(s) ** 2, 1.0)
    return np.stack([CX + x, FACE_CY + y], axis=1)


def _face_half_width(outline: np.ndarray, y):
    right = outline[outline[:, 0] >= CX]
    order = np.argsort(right[:, 1])
    return np.interp(y, right[order, 1], right[order, 0]) - CX


def _head_fitter(outline: np.ndarray, shape: int):
    """Pull hairline points in to the head's edge (face or cranium), so no hairline ever leaves a
    transparent gap between the hair and a narrow face."""
    rx, rt = _FACE_SHAPES[shape][:2]

    def fit(pts) -> np.ndarray:
        pts = np.array(pts, dtype=np.float64)
        y = pts[:, 1]
        cranium = 0.94 * rx * np.sqrt(np.clip(1 - ((y - FACE_CY) / rt) ** 2, 0, None))
        hw = np.maximum(_face_half_width(outline, y), cranium) - 1.5
        dx = pts[:, 0] - CX
        pts[:, 0] = CX + np.sign(dx) * np.minimum(np.abs(dx), np.maximum(hw, 0))
        return pts

    return fit


def _draw(p: _Painter, a: dict[str, int]) -> None:
    skin = FACE_COLORS[a["face_color"]]
    hair_c = HAIR_COLORS[a["hair_color"]]
    outline = _face_outline(a["face_shape"], a["chin_length"])
    chin_y = float(outline[:, 1].max())
    style = HAIR_STYLES[a["hair"]]

    _hair_back(p, style, hair_c, skin)
    # ears
    hw = _face_half_width(outline, EYE_Y + 8)
    for sx in (-1, 1):
        p.ellipse(CX + sx * (hw + 2), EYE_Y + 10, 13, 22, _rgba(skin, 0.93))
        p.ellipse(CX + sx * (hw + 4), EYE_Y + 10, 6, 12, _rgba(skin, 0.8))
    # the cranium: a round head top under every face shape, so no hairline leaves a gap
    rx, rt = _FACE_SHAPES[a["face_shape"]][:2]
    p.ellipse(CX, FACE_CY, rx * 0.94, rt, _rgba(skin))
    p.poly(outline, _rgba(skin))
    # nose
    p.line([(CX - 6, 224), (CX, 229), (CX + 6, 224)], _rgba(skin, 0.72), 3.5)

    facial = _FACIAL_HAIR[a["facial_hair"]]
    _facial_hair_under(p, facial, outline, chin_y, hair_c, skin)
    _mouth(p)
    _facial_hair_over(p, facial, hair_c)
    _eyes(p, a, skin)
    _glasses(p, a, outline)
    _hair_front(p, style, hair_c, skin, _head_fitter(outline, a["face_shape"]))
    _eyebrows(p, a, hair_c)  # last, so no fringe ever hides them


def _mouth(p: _Painter) -> None:
    u = np.linspace(-24, 24, 17)
    top = MOUTH_Y + 3 * (1 - (u / 24) ** 2)
    bottom = MOUTH_Y + 15 * (1 - (u / 24) ** 2)
    pts = np.concatenate([np.stack([CX + u, top], 1), np.stack([CX + u, bottom], 1)[::-1]])
    p.poly(pts, _LIPS)


# --- eyes -------------------------------------------------------------------------------------


def _eye_polygon(slant: int) -> np.ndarray:
    rx, ry, sharp = _EYE_SHAPES[slant]
    t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    s = np.sin(t)
    return np.stack([rx * np.cos(t), ry * np.sign(s) * np.abs(s) ** sharp], axis=1)


def _eyes(p: _Painter, a: dict[str, int], skin) -> None:
    iris_c = _rgba(EYE_COLORS[a["eye_color"]])
    rx, ry, _ = _EYE_SHAPES[a["eye_slant"]]
    base = _eye_polygon(a["eye_slant"])
    angle = _EYE_ANGLES[a["eye_angle"]]
    circle = _ellipse_pts(0, 0, 15.5, 15.5, 28)[:-1]
    pupil = _ellipse_pts(0, 0, 6.5, 6.5, 16)[:-1]
    lid_edge = -ry * 0.25
    for side in (1, -1):
        ex = CX + side * EYE_DX

        def place(pts):
            q = np.array(pts, dtype=np.float64)
            q[:, 0] *= side  # the left eye mirrors the right one
            q = q + (ex, EYE_Y)
            return _rotate(q, ex, EYE_Y, -side * angle)

        eye = place(base)
        p.poly(eye, (255, 255, 255, 255))
        p.poly(_clip_convex(place(circle), eye), iris_c)
        p.poly(_clip_convex(place(pupil), eye), (15, 15, 20, 255))
        hl = place([(-5, -5)])[0]
        p.ellipse(hl[0], hl[1], 3.2, 3.2, (255, 255, 255, 255))
        upper = base[base[:, 1] <= 0]
        upper = upper[np.argsort(upper[:, 0])]
        if a["eye_lid"]:
            # an upper lid, skin-coloured, covering the top of the eye, with a crease line
            lid = np.concatenate([upper[::-1], [(-rx, lid_edge), (rx, lid_edge)]])
            lid = _clip_convex(place(lid), eye)
            p.poly(lid, _rgba(skin, 0.82))
            p.line(place([(-rx * 0.9, lid_edge), (rx * 0.9, lid_edge)]), _INK, 2.0)
        p.line(place(upper), _INK, 2.6)
        if a["eye_lashes"]:
            for u, du, dv in ((0.35, 3, -11), (0.65, 7, -11), (0.92, 12, -7)):
                x0 = rx * u
                y0 = float(np.interp(x0, upper[:, 0], upper[:, 1]))
                p.line(place([(x0, y0), (x0 + du, y0 + dv)]), _INK, 3.4)


# --- eyebrows ---------------------------------------------------------------------------------


def _brow_curve(shape: int, length: float, n: int = 14) -> np.ndarray:
    yi, yp, tp, yo, smooth = _BROW_SHAPES[shape]
    t = np.linspace(0, 1, n)
    if smooth == "wave":
        y = 5.5 * np.sin(t * 2 * math.pi) - 2
    elif smooth:
        # quadratic through the three points (Lagrange), peak at tp
        y = yi * (t - tp) * (t - 1) / (tp * 1) + yp * t * (t - 1) / (tp * (tp - 1)) + yo * t * (t - tp) / (1 * (1 - tp))
    else:
        y = np.interp(t, [0, tp, 1], [yi, yp, yo])
    return np.stack([t * length, y], axis=1)


def _eyebrows(p: _Painter, a: dict[str, int], hair_c) -> None:
    length = _BROW_LEN[a["eyebrow_width"]]
    thick = _BROW_THICK[a["eyebrow_thickness"]]
    y0 = EYE_Y - 21 - _BROW_GAP[a["eye_eyebrow_distance"]]
    curve = _brow_curve(a["eyebrow_shape"], length)
    t = np.linspace(0, 1, len(curve))
    if a["eyebrow_weight"] == 0:  # tapered, a lighter tone of the hair colour
        widths = thick * (0.35 + 0.65 * np.sin(np.pi * np.clip(t * 0.9 + 0.1, 0, 1)) ** 0.6)
        colour = _mix(hair_c, (0, 0, 0), 0.15)
    else:  # blunt, even and darker
        widths = np.full(len(t), thick)
        colour = _mix(hair_c, (0, 0, 0), 0.55)
    right = curve + (CX + 17, y0)
    for pts in (right, _mirror(right)):
        p.poly(_thick_curve(pts, widths), colour)
        if a["eyebrow_weight"] == 1:
            for q in (pts[0], pts[-1]):
                p.ellipse(q[0], q[1], thick / 2, thick / 2, colour)


# --- glasses ----------------------------------------------------------------------------------


def _lens(kind: str) -> tuple[np.ndarray, bool]:
    """The right lens outline around (0, 0) and whether it is filled (sunglasses)."""
    pts, filled = _lens_shape(kind)
    return pts * 1.2, filled


def _lens_shape(kind: str) -> tuple[np.ndarray, bool]:
    if kind in ("round", "sun_round"):
        return _ellipse_pts(0, 0, 25, 25, 36)[:-1], kind == "sun_round"
    if kind == "small_round":
        return _ellipse_pts(0, 0, 17, 17, 30)[:-1], False
    if kind == "oval":
        return _ellipse_pts(0, 0, 30, 19, 36)[:-1], False
    if kind == "rectangle":
        return np.array([(-30, -16), (30, -16), (30, 16), (-30, 16)], float), False
    if kind in ("rounded", "sun_square"):
        # superellipse: a rounded square
        t = np.linspace(0, 2 * math.pi, 36, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        return np.stack(
            [28 * np.sign(c) * np.abs(c) ** 0.4, 23 * np.sign(s) * np.abs(s) ** 0.4], 1
        ), kind == "sun_square"
    if kind == "cat_eye":
        return np.array(
            [(-26, -14), (0, -17), (24, -20), (34, -26), (30, -4), (20, 14), (0, 18), (-20, 14), (-28, 2)], float
        ), False
    if kind == "aviator":
        return np.array(
            [(-26, -17), (0, -19), (28, -18), (30, -6), (24, 12), (10, 24), (-6, 24), (-20, 14), (-28, -2)], float
        ), False
    if kind == "hexagon":
        t = np.linspace(0, 2 * math.pi, 6, endpoint=False)
        return np.stack([27 * np.cos(t), 25 * np.sin(t)], 1), False
    raise AssertionError(kind)


def _glasses(p: _Painter, a: dict[str, int], outline: np.ndarray) -> None:
    kind = _GLASSES[a["glasses"]]
    if kind is None:
        return
    frame = _rgba(GLASSES_COLORS[a["glasses_color"]])
    hw = _face_half_width(outline, EYE_Y - 5)
    if kind == "browline":
        lens = _ellipse_pts(0, 0, 34, 24, 36)[:-1]
        for side in (1, -1):
            pts = lens * (side, 1) + (CX + side * EYE_DX, EYE_Y)
            p.poly(pts, None, (60, 60, 60, 255), 2.0)
            top = _ellipse_pts(CX + side * EYE_DX, EYE_Y, 35, 25, 20, math.pi, 2 * math.pi)
            p.line(top, frame, 8.0)
        p.line([(CX - 16, EYE_Y - 14), (CX, EYE_Y - 17), (CX + 16, EYE_Y - 14)], frame, 5.0)
        for side in (1, -1):
            p.line([(CX + side * (EYE_DX + 32), EYE_Y - 12), (CX + side * (hw + 4), EYE_Y - 14)], frame, 5.0)
        return
    lens, filled = _lens(kind)
    inner = float(np.min(lens[:, 0])) + EYE_DX  # distance of lens inner edge from the axis
    outer = float(np.max(lens[:, 0])) + EYE_DX
    for side in (1, -1):
        pts = lens * (side, 1) + (CX + side * EYE_DX, EYE_Y)
        p.poly(pts, _LENS if filled else None, frame, 7.0)
        p.line([(CX + side * (outer - 2), EYE_Y - 8), (CX + side * (hw + 4), EYE_Y - 12)], frame, 5.0)
    p.line([(CX - inner - 1, EYE_Y - 6), (CX, EYE_Y - 10), (CX + inner + 1, EYE_Y - 6)], frame, 5.0)


# --- facial hair ------------------------------------------------------------------------------


def _jaw_band(outline: np.ndarray, y_top: float, inset: float, ext: float, point: float = 0.0):
    """The lower face below y_top, from the face edge pushed out by `ext` (more at the chin,
    sharpened by `point`) in to `inset` units inside the edge (inset=None: the whole region)."""
    lower = outline[outline[:, 1] >= y_top]
    # order from the right side, round the chin, to the left side
    ang = np.arctan2(lower[:, 1] - FACE_CY, lower[:, 0] - CX)
    lower = lower[np.argsort(ang)]
    d = lower - (CX, FACE_CY)
    r = np.linalg.norm(d, axis=1, keepdims=True)
    u = d / r
    down = np.clip(u[:, 1:2], 0, 1)  # 1 at the chin, 0 at the sides
    outer = lower + u * (ext * down ** (1 + point * 6))
    if inset is None:
        return outer
    inner = lower - u * inset
    return np.concatenate([outer, inner[::-1]])


def _facial_hair_under(p, kind, outline, chin_y, hair_c, skin) -> None:
    if kind is None:
        return
    colour = _rgba(hair_c)
    if kind == "stubble":
        p.poly(
            np.concatenate([_jaw_band(outline, 228, None, 0), [(CX - 40, 236), (CX + 40, 236)]]),
            _mix(skin, hair_c, 0.45),
        )
    elif kind in ("beard_short", "beard_medium", "beard_long"):
        ext = {"beard_short": 8, "beard_medium": 22, "beard_long": 38}[kind]
        band = _jaw_band(outline, 212, None, ext, point=0.5 if kind == "beard_long" else 0.0)
        p.poly(np.concatenate([band, [(CX - 50, 222), (CX, 238), (CX + 50, 222)]]), colour)
    elif kind == "goatee":
        p.poly(
            [
                (CX - 24, MOUTH_Y + 16),
                (CX + 24, MOUTH_Y + 16),
                (CX + 22, chin_y - 6),
                (CX + 8, chin_y + 4),
                (CX - 8, chin_y + 4),
                (CX - 22, chin_y - 6),
            ],
            colour,
        )
    elif kind == "chin_strap":
        p.poly(_jaw_band(outline, 200, 9, 3), colour)
    elif kind == "mustache_goatee":
        p.poly([(CX - 14, MOUTH_Y + 18), (CX + 14, MOUTH_Y + 18), (CX + 4, chin_y + 10), (CX - 4, chin_y + 10)], colour)
    elif kind == "soul_patch":
        p.poly([(CX - 12, MOUTH_Y + 19), (CX + 12, MOUTH_Y + 19), (CX, MOUTH_Y + 40)], colour)
    elif kind == "mutton_chops":
        band = _jaw_band(outline, 200, 26, 2)
        right = band[band[:, 0] > CX + 45]  # the sideburn part of a jaw band
        p.poly(right, colour)
        p.poly(_mirror(right), colour)
        p.poly([(CX + 48, 238), (CX + 88, 215), (CX + 80, 255)], colour)
        p.poly(_mirror([(CX + 48, 238), (CX + 88, 215), (CX + 80, 255)]), colour)
    elif kind == "chin_curtain":
        p.poly(_jaw_band(outline, 190, 18, 12), colour)
    elif kind == "horseshoe":
        for sx in (1, -1):
            p.line(
                [(CX + sx * 20, MOUTH_Y - 6), (CX + sx * 32, MOUTH_Y + 4), (CX + sx * 32, MOUTH_Y + 38)], colour, 9.0
            )


def _facial_hair_over(p, kind, hair_c) -> None:
    colour = _rgba(hair_c)
    y = MOUTH_Y - 9
    if kind == "mustache_thick":
        p.poly(
            [
                (CX - 40, y + 12),
                (CX - 28, y - 8),
                (CX, y - 11),
                (CX + 28, y - 8),
                (CX + 40, y + 12),
                (CX + 14, y + 5),
                (CX, y + 7),
                (CX - 14, y + 5),
            ],
            colour,
        )
    elif kind in ("beard_short", "beard_medium", "beard_long", "mustache_goatee", "horseshoe"):
        p.poly(
            [(CX - 32, y + 8), (CX - 22, y - 6), (CX, y - 8), (CX + 22, y - 6), (CX + 32, y + 8), (CX, y + 3)], colour
        )
    elif kind == "mustache_thin":
        p.line([(CX - 24, y + 4), (CX - 10, y - 2), (CX, y - 1), (CX + 10, y - 2), (CX + 24, y + 4)], colour, 4.0)
    elif kind == "handlebar":
        pts = [(CX + 0, y - 6), (CX + 20, y - 4), (CX + 34, y + 2), (CX + 42, y - 8), (CX + 38, y - 16)]
        p.line(pts, colour, 6.0)
        p.line(_mirror(pts), colour, 6.0)


# --- hair -------------------------------------------------------------------------------------


def _skull_arc(rx: float, ry: float, bottom: float = 180.0, n: int = 41, bump=None) -> np.ndarray:
    """Outer hair contour from the left side (at y=bottom) over the top to the right side."""
    t = np.linspace(math.pi, 2 * math.pi, n)
    r = np.ones_like(t) if bump is None else bump(t)
    pts = np.stack([CX + rx * r * np.cos(t), SKULL_CY + ry * r * np.sin(t)], axis=1)
    return np.concatenate([[(CX - rx, bottom)], pts, [(CX + rx, bottom)]])


def _spikes(k: int, amp: float):
    def bump(t):
        phase = (t - math.pi) / math.pi * k
        return 1 + amp * (1 - np.abs((phase % 1.0) * 2 - 1))

    return bump


def _curls(k: int, amp: float):
    def bump(t):
        return 1 + amp * np.abs(np.sin((t - math.pi) * k))

    return bump


def _hairline(fringe: str) -> np.ndarray:
    """The inner edge of the hair cap across the forehead, from right temple to left temple."""
    if fringe == "high":
        pts = [(CX + 99, 182), (CX + 97, 140), (CX + 82, 110), (CX + 45, 96), (CX, 93)]
        return np.concatenate([pts, _mirror(pts[:-1])[::-1]])
    if fringe == "bangs":
        xs = np.linspace(CX + 96, CX - 96, 13)
        ys = 115 + 3 * np.cos(np.linspace(0, 12 * math.pi, 13))  # a slightly ragged cut
        return np.concatenate(
            [[(CX + 99, 182), (CX + 98, 117)], np.stack([xs, ys], 1), [(CX - 98, 117), (CX - 99, 182)]]
        )
    if fringe in ("part_left", "part_right"):
        # swept away from a side parting: low over one brow, high at the parting
        pts = np.array(
            [
                (CX + 99, 182),
                (CX + 98, 132),
                (CX + 70, 121),
                (CX + 30, 112),
                (CX - 10, 100),
                (CX - 45, 88),
                (CX - 62, 86),
                (CX - 82, 100),
                (CX - 96, 130),
                (CX - 99, 182),
            ]
        )
        return pts if fringe == "part_left" else _mirror(pts)[::-1]
    if fringe == "middle":
        pts = [(CX + 99, 182), (CX + 97, 152), (CX + 72, 126), (CX + 38, 106), (CX + 10, 88), (CX, 84)]
        return np.concatenate([pts, _mirror(pts[:-1])[::-1]])
    if fringe == "straight":
        return np.array([(CX + 99, 182), (CX + 98, 108), (CX - 98, 108), (CX - 99, 182)])
    if fringe == "peak":
        pts = [(CX + 99, 182), (CX + 96, 130), (CX + 70, 100), (CX + 30, 96), (CX, 110)]
        return np.concatenate([pts, _mirror(pts[:-1])[::-1]])
    raise AssertionError(fringe)


def _part_line(p, fringe, colour) -> None:
    if fringe == "part_left":
        p.line([(CX - 58, 88), (CX - 54, 76)], colour, 3.0)
    elif fringe == "part_right":
        p.line([(CX + 58, 88), (CX + 54, 76)], colour, 3.0)
    elif fringe == "middle":
        p.line([(CX, 86), (CX, 68)], colour, 3.0)


_FAMILY_ARC = {  # family -> (rx, ry, bump)
    "smooth": (114, 106, None),
    "volume": (122, 132, None),
    "spiky": (114, 104, _spikes(9, 0.2)),
    "curly": (118, 110, _curls(8, 0.1)),
}


def _back_shape(family: str, length: str, rx: float, ry: float, bump) -> np.ndarray:
    """Hair behind the head down to the jaw (bob) or past the chin (long), with a notch for the chin."""
    bottom = 262.0 if length == "bob" else 340.0
    flare = 4.0 if length == "bob" else 14.0
    if family == "volume":
        flare += 12
    arc = _skull_arc(rx, ry, bump=bump)[1:-1]
    w = rx + flare
    n = 9
    xs = np.linspace(CX + w, CX - w, n)
    if family == "spiky":
        ys = bottom - 16 * (np.arange(n) % 2)
    elif family == "curly":
        ys = bottom - 9 * np.abs(np.sin(np.arange(n) * 1.3))
    else:
        ys = bottom - 10 * (np.linspace(-1, 1, n) ** 2 < 0.2)
    if length == "long":
        # leave a gap under the chin so it reads as hair falling behind the shoulders
        xs = np.concatenate([xs[:3], [CX + 52, CX + 40, CX - 40, CX - 52], xs[-3:]])
        ys = np.concatenate([ys[:3], [bottom, 292, 292, bottom], ys[-3:]])
    sides = [(CX + rx + flare * 0.3, SKULL_CY + 30)]
    return np.concatenate([arc, sides, np.stack([xs, ys], 1), _mirror(sides)])


def _hair_back(p: _Painter, style, hair_c, skin) -> None:
    family, a, b = style
    back = _rgba(hair_c, 0.82)
    if family in _FAMILY_ARC and a != "short":
        rx, ry, bump = _FAMILY_ARC[family]
        p.poly(_back_shape(family, a, rx, ry, bump), back)
    elif family == "bun":
        if a == "bun":
            p.ellipse(CX, 42, 34, 30, back)
            p.line([(CX - 26, 66), (CX + 26, 66)], _rgba(hair_c, 0.6), 4)
        else:
            for sx in (1, -1):
                p.ellipse(CX + sx * 98, 74, 30, 30, back)
    elif family == "ponytail":
        sx = 1 if a == "right" else -1
        tail = [
            (CX + sx * 96, 100),
            (CX + sx * 140, 130),
            (CX + sx * 160, 190),
            (CX + sx * 158, 260),
            (CX + sx * 140, 318),
            (CX + sx * 128, 250),
            (CX + sx * 118, 180),
            (CX + sx * 100, 150),
        ]
        p.poly(tail, back)
        p.ellipse(CX + sx * 124, 118, 10, 14, _rgba(hair_c, 0.55))
    elif family == "pigtails":
        end = 262 if a == "medium" else 330
        for sx in (1, -1):
            tail = [
                (CX + sx * 100, 160),
                (CX + sx * 140, 178),
                (CX + sx * 150, (end + 170) / 2),
                (CX + sx * 134, end),
                (CX + sx * 120, (end + 170) / 2),
                (CX + sx * 108, 196),
            ]
            p.poly(tail, back)
            p.ellipse(CX + sx * 118, 178, 9, 12, _rgba(hair_c, 0.55))
    elif family == "afro":
        r = {"small": 126, "medium": 140, "large": 154}[a]
        pts = _ellipse_pts(CX, SKULL_CY + 4, r, r * 0.98, 90)
        t = np.linspace(0, 2 * math.pi, 90)
        pts = (pts - (CX, SKULL_CY + 4)) * (1 - 0.05 + 0.05 * np.abs(np.sin(t * 11)))[:, None] + (CX, SKULL_CY + 4)
        p.poly(pts, back)
    elif family == "receding" and a == "horseshoe_long":
        p.poly(_back_shape("smooth", "bob", 114, 100, None), back)
    elif family == "undercut":
        pass


def _hair_front(p: _Painter, style, hair_c, skin, fit) -> None:
    family, a, b = style
    colour = _rgba(hair_c)
    dark = _rgba(hair_c, 0.62) if sum(hair_c) > 150 else _mix(hair_c, (255, 255, 255), 0.3)
    shaved = _mix(skin, hair_c, 0.5)
    if family == "bald":
        return
    if family in _FAMILY_ARC:
        rx, ry, bump = _FAMILY_ARC[family]
        p.poly(np.concatenate([_skull_arc(rx, ry, bump=bump), fit(_hairline(b))]), colour)
        if bump is None:
            _part_line(p, b, dark)
    elif family in ("bun", "ponytail"):
        p.poly(np.concatenate([_skull_arc(112, 102), fit(_hairline(b))]), colour)
        _part_line(p, b, dark)
    elif family == "pigtails":
        p.poly(np.concatenate([_skull_arc(112, 102), fit(_hairline(b))]), colour)
        _part_line(p, "middle", dark)
    elif family == "afro":
        r = {"small": 126, "medium": 140, "large": 154}[a]
        arc = _skull_arc(r * 0.86, r * 0.86 - 6, bottom=190, bump=_curls(10, 0.06))
        p.poly(np.concatenate([arc, fit(_hairline(b))]), colour)
    elif family == "mohawk":
        p.poly(np.concatenate([_skull_arc(110, 98), fit(_hairline("high"))]), shaved)
        h = {"low": 14, "medium": 30, "tall": 48}[a]
        top = SKULL_CY - 98 - h
        n = 9
        hw = 32 if b == "spiky" else 22
        xs = np.linspace(CX - hw, CX + hw, n)
        if b == "spiky":
            ys = top - 10 + 30 * (np.arange(n) % 2)
        else:
            ys = top + 18 * np.linspace(-1, 1, n) ** 2
        pts = np.concatenate(
            [
                [(CX - hw + 4, 100), (CX - hw, SKULL_CY - 80)],
                np.stack([xs, ys], 1),
                [(CX + hw, SKULL_CY - 80), (CX + hw - 4, 100)],
            ]
        )
        p.poly(pts, colour)
    elif family == "buzz":
        p.poly(np.concatenate([_skull_arc(108, 96), fit(_hairline(a))]), _mix(hair_c, skin, 0.25))
    elif family == "receding":
        # hair on the sides only; the crown is bare skin
        for sx in (1, -1):
            side = np.concatenate(
                [
                    [(CX + sx * 114, 182), (CX + sx * 112, 140), (CX + sx * 100, 104)],
                    fit([(CX + sx * 86, 96), (CX + sx * 90, 130), (CX + sx * 99, 182)]),
                ]
            )
            p.poly(side, colour)
        if a == "tuft":
            for dx, dy, r in ((-16, 72, 16), (10, 66, 18), (26, 80, 12), (-4, 84, 13)):
                p.ellipse(CX + dx, dy, r, r * 0.8, colour)
    elif family == "undercut":
        sx = 1 if a == "right" else -1
        p.poly(np.concatenate([_skull_arc(110, 98), fit(_hairline("high"))]), shaved)
        h = {"low": 10, "medium": 26, "tall": 42}[b]
        top = SKULL_CY - 100 - h
        quiff = [
            (CX - sx * 92, 112),
            (CX - sx * 96, SKULL_CY - 86),
            (CX - sx * 60, top + 10),
            (CX, top),
            (CX + sx * 60, top + 4),
            (CX + sx * 112, top + 28),
            (CX + sx * 124, SKULL_CY - 48),
            (CX + sx * 100, 130),
            (CX + sx * 70, 112),
            (CX + sx * 20, 100),
            (CX - sx * 50, 96),
        ]
        p.poly(quiff, colour)
        p.line([(CX - sx * 70, 100), (CX - sx * 62, SKULL_CY - 90)], dark, 3.0)


if __name__ == "__main__":  # python -m tasks.synthetic.cartoons [sheet.png]: speed, and a contact sheet
    import sys
    import time

    rng = np.random.default_rng(0)
    attrs = [sample_attributes(rng) for _ in range(16)]
    t0 = time.perf_counter()
    images = [render_avatar(a) for a in attrs]
    print(f"{(time.perf_counter() - t0) / len(attrs) * 1000:.1f} ms per 500x500 avatar")
    if len(sys.argv) > 1:
        sheet = Image.new("RGB", (4 * 250, 4 * 250), "white")
        for i, im in enumerate(images):
            flat = Image.new("RGBA", im.size, (255, 255, 255, 255))
            flat.alpha_composite(im)
            sheet.paste(
                flat.convert("RGB").resize((250, 250), Image.Resampling.LANCZOS), ((i % 4) * 250, (i // 4) * 250)
            )
        sheet.save(sys.argv[1])
        print("wrote", sys.argv[1])
