"""The procedural Cartoon Set imitation: layout, determinism, framing, and that every attribute is
visible (each variant draws something different, colours stay apart after preprocessing)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from tasks.cartoon.schema import AttributeSchema, parse_attribute_csv
from tasks.synthetic.cartoons import (
    CARTOONSET_ATTRIBUTES,
    EYE_COLORS,
    FACE_COLORS,
    GLASSES_COLORS,
    HAIR_COLORS,
    HAIR_STYLES,
    render_avatar,
    render_to_files,
    sample_attributes,
)

EXPECTED = [
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
]

# A base avatar: short smooth hair, no facial hair, no glasses, mid values elsewhere.
BASE = {name: count // 2 for name, count in CARTOONSET_ATTRIBUTES}
BASE.update(hair=HAIR_STYLES.index(("smooth", "short", "high")), facial_hair=14, glasses=11)
RENDER_SIZE = 250  # half size keeps the all-variants sweep quick; 500 is checked elsewhere


def _preprocess(image: Image.Image) -> np.ndarray:
    """What the cartoon data stage does: composite on white, centre-crop 360/500, resize to 64."""
    flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
    flat.alpha_composite(image)
    w = image.size[0]
    c = round(360 * w / 500)
    left = (w - c) // 2
    square = flat.convert("RGB").crop((left, left, left + c, left + c))
    return np.asarray(square.resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float64)


def test_attribute_layout():
    assert list(CARTOONSET_ATTRIBUTES) == EXPECTED
    assert sum(c for _, c in CARTOONSET_ATTRIBUTES) == 217
    assert len(HAIR_STYLES) == 111 and len(set(HAIR_STYLES)) == 111
    assert HAIR_STYLES[0][0] == "bald"
    assert (len(FACE_COLORS), len(HAIR_COLORS), len(EYE_COLORS), len(GLASSES_COLORS)) == (11, 10, 5, 7)


def test_sample_attributes_covers_every_variant():
    rng = np.random.default_rng(0)
    draws = [sample_attributes(rng) for _ in range(400)]
    for name, count in CARTOONSET_ATTRIBUTES:
        seen = {d[name] for d in draws}
        assert seen <= set(range(count))
        if count <= 15:
            assert seen == set(range(count)), name


@pytest.mark.parametrize(
    "palette,minimum",
    [
        (FACE_COLORS, 60),
        (HAIR_COLORS, 60),
        (EYE_COLORS, 60),
        (GLASSES_COLORS, 60),
    ],
)
def test_palettes_far_apart(palette, minimum):
    a = np.asarray(palette, dtype=np.float64)
    for i, j in itertools.combinations(range(len(a)), 2):
        assert np.linalg.norm(a[i] - a[j]) >= minimum, (i, j, palette[i], palette[j])


def test_render_to_files_deterministic(tmp_path):
    key = render_to_files(tmp_path / "a", 7, seed=3)
    assert key == "cs7"
    render_to_files(tmp_path / "b", 7, seed=3)
    render_to_files(tmp_path / "c", 8, seed=3)
    render_to_files(tmp_path / "d", 7, seed=4)
    for ext in ("png", "csv"):
        same_a = (tmp_path / "a" / f"cs7.{ext}").read_bytes()
        assert same_a == (tmp_path / "b" / f"cs7.{ext}").read_bytes()
    assert (tmp_path / "a" / "cs7.png").read_bytes() != (tmp_path / "c" / "cs8.png").read_bytes()
    assert (tmp_path / "a" / "cs7.png").read_bytes() != (tmp_path / "d" / "cs7.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cs7.csv", "cs7.png"]  # no temp left

    text = (tmp_path / "a" / "cs7.csv").read_text()
    lines = text.splitlines()
    assert len(lines) == 18
    rows = parse_attribute_csv(text)
    assert [(n, c) for n, _, c in rows] == EXPECTED
    name, index, count = rows[9]
    assert lines[9] == f'"hair", {index}, 111'
    schema = AttributeSchema.consensus([rows])
    assert schema.width == 217
    schema.indices(rows)  # validates ranges


def test_files_are_framed_inside_the_crop(tmp_path):
    inside = np.zeros((500, 500), dtype=bool)
    inside[70:430, 70:430] = True
    widths = []
    for index in range(30):
        render_to_files(tmp_path, index, seed=11)
        with Image.open(tmp_path / f"cs{index}.png") as im:
            assert im.size == (500, 500) and im.mode == "RGBA"
            alpha = np.asarray(im)[:, :, 3]
        for y, x in ((0, 0), (0, 499), (499, 0), (499, 499), (250, 0), (0, 250)):
            assert alpha[y, x] == 0
        assert not alpha[~inside].any(), f"cs{index} draws outside the central 360x360 box"
        cols = np.flatnonzero(alpha[250].astype(bool) | alpha[260].astype(bool))
        widths.append(cols.max() - cols.min())
    # the head (face plus hair or ears) spans a large part of the 360-pixel crop
    assert np.median(widths) > 0.55 * 360


def test_every_variant_of_every_attribute_draws_differently():
    for name, count in CARTOONSET_ATTRIBUTES:
        base = dict(BASE)
        if name == "glasses_color":
            base["glasses"] = 0
        seen = {}
        for v in range(count):
            attrs = dict(base, **{name: v})
            px = np.asarray(render_avatar(attrs, RENDER_SIZE)).tobytes()
            assert px not in seen, f"{name}: variants {seen.get(px)} and {v} draw the same image"
            seen[px] = v


def test_hair_variants_distinct_at_full_size():
    seen = {}
    for v in range(111):
        px = np.asarray(render_avatar(dict(BASE, hair=v))).tobytes()
        assert px not in seen, (seen.get(px), v, HAIR_STYLES[v])
        seen[px] = v


@pytest.mark.parametrize("name,minimum", [("face_color", 45), ("hair_color", 45)])
def test_colours_stay_apart_at_64px(name, minimum):
    base = dict(BASE)
    if name == "hair_color":
        base["hair"] = HAIR_STYLES.index(("smooth", "long", "high"))  # a large hair region
    count = dict(CARTOONSET_ATTRIBUTES)[name]
    small = [_preprocess(render_avatar(dict(base, **{name: v}), RENDER_SIZE)) for v in range(count)]
    # the region this attribute colours: pixels that change between the two most different entries
    stack = np.stack(small)
    spread = (stack.max(axis=0) - stack.min(axis=0)).sum(axis=-1)
    region = spread > 120
    assert region.sum() > 200, f"{name} colours only {region.sum()} of 4096 pixels"
    means = np.stack([s[region].mean(axis=0) for s in small])
    for i, j in itertools.combinations(range(count), 2):
        d = np.linalg.norm(means[i] - means[j])
        assert d >= minimum, f"{name} {i} vs {j}: mean colours {means[i].round()} {means[j].round()} ({d:.1f})"


@pytest.mark.parametrize(
    "change,match",
    [
        ({"hair": 111}, "hair"),
        ({"hair": -1}, "hair"),
        ({"glasses": 12}, "glasses"),
        ({"eye_color": 2.0}, "eye_color"),
        ({"nose": 1}, "nose"),
    ],
)
def test_invalid_attributes_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        render_avatar(dict(BASE, **change))


def test_missing_attribute_rejected():
    attrs = dict(BASE)
    del attrs["eye_slant"]
    with pytest.raises(ValueError, match="eye_slant"):
        render_avatar(attrs)


def test_other_sizes():
    im = render_avatar(BASE, 128)
    assert im.size == (128, 128) and im.mode == "RGBA"
    assert np.asarray(im)[:, :, 3].any()


def test_speed_is_reported(tmp_path, capsys):
    """Prints ms per avatar (run with -s to see it); speed targets live in benchmarks, not here."""
    import time

    rng = np.random.default_rng(0)
    attrs = [sample_attributes(rng) for _ in range(10)]
    t0 = time.perf_counter()
    for a in attrs:
        render_avatar(a)
    t1 = time.perf_counter()
    for i in range(10):
        render_to_files(tmp_path, i, seed=0)
    t2 = time.perf_counter()
    with capsys.disabled():
        print(
            f"\ncartoon_render: {(t1 - t0) * 100:.1f} ms/avatar render, {(t2 - t1) * 100:.1f} ms/avatar render+PNG+CSV"
        )


def test_png_files_hold_the_rendered_pixels(tmp_path):
    """render_to_files writes its own PNGs (unfiltered rows): the pixels are render_avatar's."""
    for index in range(6):
        render_to_files(tmp_path, index, seed=2)
        attrs = sample_attributes(np.random.default_rng(np.random.SeedSequence([2, index])))
        with Image.open(tmp_path / f"cs{index}.png") as im:
            assert im.format == "PNG" and im.mode == "RGBA" and im.size == (500, 500)
            assert np.array_equal(np.asarray(im), np.asarray(render_avatar(attrs)))


def test_rgba_canvas_shortcut_gives_the_rgba_drawings_pixels():
    """Drawing on an RGBa canvas and reducing it is what drawing in RGBA and Image.reduce() (which
    converts to RGBa, reduces and converts back) gave: every ink is opaque."""
    from PIL import ImageDraw

    from tasks.synthetic.cartoons import _BOX, _SS, _draw, _Painter, _render_box

    rng = np.random.default_rng(5)
    for _ in range(8):
        attrs = sample_attributes(rng)
        painter = _Painter(_BOX * _SS, float(_SS))
        painter.image = Image.new("RGBA", painter.image.size, (0, 0, 0, 0))
        painter.draw = ImageDraw.Draw(painter.image)
        _draw(painter, attrs)
        assert painter.image.reduce(_SS).tobytes() == _render_box(attrs, 500)[0].tobytes()


def test_painter_refuses_translucent_ink():
    from tasks.synthetic.cartoons import _Painter

    painter = _Painter(100, 1.0)
    with pytest.raises(ValueError, match="opaque"):
        painter.poly([(10, 10), (50, 10), (30, 40)], (10, 20, 30, 128))
