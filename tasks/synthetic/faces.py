"""Procedurally drawn "in-the-wild" face photos with exact 68-point landmarks (the offline default).

Each face is drawn from a 68-point shape in dlib's layout (jaw 0-16, brows 17-26, nose 27-35,
eyes 36-47, mouth 48-67), so the landmarks written to the metadata are the very points the
drawing was made from, mapped by the same similarity transform (scale, rotation up to about
30 degrees, position anywhere in the frame, even partly outside it: that exercises the padding
path of the alignment).

An identity is a fixed set of shape and colour parameters (face width, jaw, eye spacing and size,
nose and mouth geometry, skin, hair, iris and lip colours, hair style). A photo of an identity
varies pose, expression, lighting and background. Identities come from named random streams:
base identities `base-000`... from `("base", seed, i)` and the DreamBooth subject from
`("subject", seed)`, so the subject can never be one of the base identities.

Pure numpy + Pillow (no prefect, no torch): imported by spawned worker processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter

from tasks.tracking.hashing import derive_seed

SUPERSAMPLE = 2  # drawn at 2x and downsampled: smooth edges, landmarks stay exact


def _stream(*key) -> np.random.Generator:
    """A random generator for a named stream (stable across runs, machines and Python versions)."""
    return np.random.default_rng(derive_seed(*key))


@dataclass(frozen=True)
class Identity:
    name: str
    face_width: float  # half-width of the jaw at eye level, in inter-ocular units
    jaw_depth: float  # eye line to chin
    chin_round: float  # exponent shaping the jaw (small: pointy chin, large: square jaw)
    eye_width: float
    eye_height: float
    nose_length: float
    mouth_y: float
    mouth_width: float
    lip_thickness: float
    brow_height: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    hair_style: int  # 0 short, 1 long, 2 bald-ish

    def vector(self) -> np.ndarray:
        """Numeric description (for checking that two identities differ)."""
        d = asdict(self)
        d.pop("name")
        return np.array([v for x in d.values() for v in (x if isinstance(x, tuple) else (x,))], float)


def make_identity(name: str, *key) -> Identity:
    r = _stream("identity", *key)
    tone = r.uniform(0.25, 1.0)
    skin = tuple(int(v) for v in np.clip(np.array([235, 200, 170]) * tone + r.normal(0, 8, 3), 40, 255))
    hair = tuple(
        int(v)
        for v in r.choice([[30, 20, 15], [90, 60, 30], [200, 170, 100], [140, 50, 20], [60, 60, 60], [190, 190, 190]])
        + r.integers(-15, 15, 3)
    )
    iris = tuple(int(v) for v in r.choice([[70, 45, 20], [60, 110, 160], [70, 120, 70], [40, 30, 20]]))
    lips = tuple(int(v) for v in np.clip(np.array(skin) * [0.8, 0.5, 0.5] + [40, 0, 10], 0, 255))
    return Identity(
        name=name,
        face_width=r.uniform(0.95, 1.2),
        jaw_depth=r.uniform(1.75, 2.1),
        chin_round=r.uniform(0.7, 1.6),
        eye_width=r.uniform(0.38, 0.5),
        eye_height=r.uniform(0.09, 0.15),
        nose_length=r.uniform(0.65, 0.85),
        mouth_y=r.uniform(1.1, 1.3),
        mouth_width=r.uniform(0.75, 1.0),
        lip_thickness=r.uniform(0.08, 0.16),
        brow_height=r.uniform(0.3, 0.42),
        skin=skin,
        hair=hair,
        iris=iris,
        lips=lips,
        hair_style=int(r.integers(0, 3)),
    )


def base_identity(seed: int, index: int) -> Identity:
    return make_identity(f"base-{index:03d}", "base", seed, index)


def subject_identity(seed: int) -> Identity:
    return make_identity("subject", "subject", seed)


def face_shape(ident: Identity, smile: float = 0.0, mouth_open: float = 0.0, brow_raise: float = 0.0) -> np.ndarray:
    """The 68 points in face coordinates: eye centres at (-0.5, 0) and (0.5, 0), y pointing down."""
    p = np.zeros((68, 2))
    # Jaw 0-16: from the left temple (image left) under the chin to the right temple.
    t = np.linspace(0, np.pi, 17)
    sx = -np.cos(t)
    p[0:17, 0] = ident.face_width * np.sign(sx) * np.abs(sx) ** ident.chin_round
    p[0:17, 1] = 0.1 + (ident.jaw_depth - 0.1) * np.sin(t)
    # Brows 17-21 (left), 22-26 (right): an arch above each eye.
    s = np.linspace(0, 1, 5)
    by = -ident.brow_height - brow_raise - 0.1 * np.sin(np.pi * s)
    p[17:22] = np.stack([-0.95 + 0.75 * s, by], 1)
    p[22:27] = np.stack([0.2 + 0.75 * s, by[::-1]], 1)
    # Nose bridge 27-30 and nostrils 31-35.
    p[27:31] = np.stack([np.zeros(4), np.linspace(-0.02, ident.nose_length, 4)], 1)
    ny = ident.nose_length + 0.12
    p[31:36] = np.stack([np.linspace(-0.22, 0.22, 5), ny + np.array([0, 0.03, 0.05, 0.03, 0])], 1)
    # Eyes 36-41 and 42-47: corner, two upper lid points, corner, two lower lid points.
    hw, hh = ident.eye_width / 2, ident.eye_height / 2
    eye = np.array([[-hw, 0], [-hw / 3, -hh], [hw / 3, -hh], [hw, 0], [hw / 3, hh], [-hw / 3, hh]])
    eye -= eye.mean(0)
    p[36:42] = eye + [-0.5, 0]
    p[42:48] = eye + [0.5, 0]
    # Mouth: outer lip 48-59 and inner lip 60-67.
    mw, my, lt = ident.mouth_width / 2, ident.mouth_y, ident.lip_thickness
    corner_y = my - smile * 0.1
    gap = mouth_open * 0.15
    p[48] = [-mw, corner_y]
    p[54] = [mw, corner_y]
    ux = np.array([-0.65, -0.27, 0, 0.27, 0.65]) * mw
    p[49:54] = np.stack([ux, my - lt * np.array([0.8, 1.0, 0.8, 1.0, 0.8]) - gap / 2], 1)
    lx = np.array([0.65, 0.27, 0, -0.27, -0.65]) * mw
    p[55:60] = np.stack([lx, my + lt * np.array([0.9, 1.2, 1.3, 1.2, 0.9]) + gap / 2], 1)
    p[60] = [-0.8 * mw, corner_y]
    p[64] = [0.8 * mw, corner_y]
    p[61:64] = np.stack([np.array([-0.3, 0, 0.3]) * mw, np.full(3, my - gap / 2 - 0.01)], 1)
    p[65:68] = np.stack([np.array([0.3, 0, -0.3]) * mw, np.full(3, my + gap / 2 + 0.01)], 1)
    return p


def _colour(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)


def _background(r: np.random.Generator, size: int) -> PIL.Image.Image:
    c0, c1 = r.integers(0, 256, 3), r.integers(0, 256, 3)
    angle = r.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:32, 0:32] / 32  # a linear gradient: drawn small, upsampled (cheap, smooth)
    t = np.clip((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.5, 0, 1)[..., None]
    arr = c0 * (1 - t) + c1 * t
    img = PIL.Image.fromarray(arr.astype(np.uint8), "RGB").resize((size, size), PIL.Image.BILINEAR)
    d = PIL.ImageDraw.Draw(img)
    for _ in range(int(r.integers(2, 9))):
        x0, y0 = r.uniform(-0.2, 1.0, 2) * size
        w, h = r.uniform(0.05, 0.5, 2) * size
        fill = tuple(int(v) for v in r.integers(0, 256, 3))
        (d.ellipse if r.random() < 0.5 else d.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
    return img


@dataclass
class Photo:
    image: PIL.Image.Image
    landmarks: np.ndarray  # (68, 2), pixel centres of `image`
    face_rect: list[int]  # [left, top, right, bottom] of the drawn head


def draw_photo(
    ident: Identity, key, size: int = 320, scale_range=(22.0, 48.0), max_rotation: float = 30.0, blank: bool = False
) -> Photo:
    """One photo of `ident`, fully determined by `key`.

    scale_range is the inter-ocular distance in pixels. `blank=True` draws the background only
    (a photo with no face; its landmarks are then meaningless).
    """
    r = _stream("photo", ident.name, key)
    ss = SUPERSAMPLE
    img = _background(r, size * ss)
    pts = face_shape(
        ident, smile=r.uniform(-0.3, 1.0), mouth_open=r.uniform(0, 1) ** 2, brow_raise=r.uniform(-0.03, 0.08)
    )
    scale = r.uniform(*scale_range)
    theta = np.deg2rad(r.uniform(-max_rotation, max_rotation))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    # Centre of the face (between eyes and mouth) anywhere such that at least the eyes are in frame.
    centre = r.uniform(0.12, 0.88, 2) * size

    def to_img(q):  # face coordinates -> output pixel centres
        q = np.atleast_2d(q)
        return (q - [0, 0.6]) @ rot.T * scale + centre

    def to_draw(q):  # -> supersampled canvas coordinates
        return [tuple(v) for v in (to_img(q) + 0.5) * ss - 0.5]

    light = r.uniform(0.75, 1.2)
    skin = _colour(ident.skin, light)
    shade = _colour(ident.skin, light * 0.8)
    hair = _colour(ident.hair, light)
    d = PIL.ImageDraw.Draw(img)
    w = max(1, int(round(scale * ss * 0.07)))
    if not blank:
        fw, jd = ident.face_width, ident.jaw_depth
        # Hair behind the head and neck.
        if ident.hair_style == 1:
            d.polygon(
                to_draw([[-fw * 1.25, -0.6], [fw * 1.25, -0.6], [fw * 1.3, jd + 0.4], [-fw * 1.3, jd + 0.4]]), fill=hair
            )
        d.polygon(to_draw([[-0.55, 1.2], [0.55, 1.2], [0.6, jd + 1.2], [-0.6, jd + 1.2]]), fill=shade)
        # Ears.
        for sgn in (-1, 1):
            d.polygon(
                to_draw(
                    [[sgn * fw * 0.95, 0.0], [sgn * (fw + 0.2), 0.05], [sgn * (fw + 0.15), 0.6], [sgn * fw * 0.9, 0.75]]
                ),
                fill=shade,
            )
        # Face: jaw plus a forehead arc over the top.
        t = np.linspace(0, np.pi, 13)
        forehead = np.stack([fw * np.cos(t), 0.1 - 1.25 * np.sin(t)], 1)
        d.polygon(to_draw(np.concatenate([pts[0:17], forehead[1:-1]])), fill=skin)
        # Hair on top.
        if ident.hair_style != 2:
            t = np.linspace(0, np.pi, 13)
            cap = np.stack([fw * 1.08 * np.cos(t), -0.35 - 1.05 * np.sin(t)], 1)
            fringe = np.stack([np.linspace(-fw * 1.05, fw * 1.05, 7), -0.55 - 0.12 * r.random(7)], 1)
            d.polygon(to_draw(np.concatenate([cap, fringe])), fill=hair)
        # Brows.
        brow = _colour(ident.hair, 0.6)
        d.line(to_draw(pts[17:22]), fill=brow, width=w + 1, joint="curve")
        d.line(to_draw(pts[22:27]), fill=brow, width=w + 1, joint="curve")
        # Eyes: white, iris, pupil, lid line.
        for a, b in ((36, 42), (42, 48)):
            d.polygon(to_draw(pts[a:b]), fill=(245, 245, 240))
            c = pts[a:b].mean(0)
            ir = ident.eye_height * 0.5
            cx, cy = to_draw(c)[0]
            rr = ir * scale * ss
            d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=ident.iris)
            rp = rr * 0.45
            d.ellipse([cx - rp, cy - rp, cx + rp, cy + rp], fill=(10, 10, 10))
            d.line(
                to_draw(np.concatenate([pts[a:b], pts[a : a + 1]])),
                fill=_colour(ident.skin, 0.45),
                width=max(1, w // 2),
            )
        # Nose.
        d.line(to_draw(pts[27:31]), fill=_colour(ident.skin, light * 0.7), width=max(1, w // 2))
        d.line(to_draw(pts[31:36]), fill=_colour(ident.skin, light * 0.6), width=max(1, w // 2), joint="curve")
        # Mouth: lips, then the opening.
        d.polygon(to_draw(pts[48:60]), fill=_colour(ident.lips, light))
        d.polygon(to_draw(pts[60:68]), fill=(60, 20, 25))
    # Lighting: a soft directional gradient over the whole picture, then a little sensor noise.
    img = img.resize((size, size), PIL.Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32)
    a = r.uniform(0, 2 * np.pi)
    yy, xx = np.ogrid[0:size, 0:size]
    gain = 1 + r.uniform(0.0, 0.35) * ((xx / size - 0.5) * np.cos(a) + (yy / size - 0.5) * np.sin(a))
    arr *= gain.astype(np.float32)[..., None]
    arr += r.standard_normal(arr.shape, dtype=np.float32) * 2.0
    img = PIL.Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    lm = to_img(pts)
    head = to_img(
        np.array(
            [
                [-ident.face_width, -1.2],
                [ident.face_width, -1.2],
                [-ident.face_width, ident.jaw_depth],
                [ident.face_width, ident.jaw_depth],
            ]
        )
    )
    rect = [
        int(np.floor(head[:, 0].min())),
        int(np.floor(head[:, 1].min())),
        int(np.ceil(head[:, 0].max())),
        int(np.ceil(head[:, 1].max())),
    ]
    return Photo(img, lm, rect)


def write_photo(photo: Photo, path: Path) -> dict:
    """Save as PNG; return the FFHQ-style `in_the_wild` fields known at this point."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    photo.image.save(tmp, format="PNG", compress_level=1)  # fast; the files are transient
    tmp.replace(path)
    data = path.read_bytes()
    return {
        "file_size": len(data),
        "file_md5": hashlib.md5(data).hexdigest(),
        "pixel_size": list(photo.image.size),
        "face_rect": photo.face_rect,
        "face_landmarks": np.round(photo.landmarks, 3).tolist(),
    }
