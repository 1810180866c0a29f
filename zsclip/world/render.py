"""The toy world's renderer: small RGB images of a creature drawn from its attributes, a style and a seed.

An image is a pure function of (attributes, style, seed): the same arguments give the same pixels, so the
corpus and the evaluation dataset store seeds, never images. The creature is drawn at twice the output
resolution (body shape, pattern, distinctive part, eyes, over a habitat background, with position, size,
rotation and colour jitter from the seed), then a style pass turns the drawing into a photo-like image, a
painting, a cartoon, pixel art or a coloured-pencil sketch, and the result is reduced to ``size`` pixels.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from .spec import COLOURS, STYLES

IMAGE_SIZE = 64
_SCALE = 2  # drawing resolution / output resolution
_BODY_RADIUS = {"small": 0.16, "medium": 0.22, "large": 0.28}
_HORN = (236, 226, 196)
_RING = (250, 212, 56)
_PAPER = np.array((246, 241, 228), dtype=np.float32)


def _shade(rgb: tuple[int, int, int] | np.ndarray, factor: float) -> tuple[int, int, int]:
    """Darken (factor < 1) or lighten toward white (factor > 1) a colour."""
    c = np.asarray(rgb, dtype=np.float32)
    out = c * factor if factor <= 1 else c + (255 - c) * (factor - 1)
    return tuple(int(v) for v in np.clip(out, 0, 255))


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _background(habitat: str, w: int, rng: np.random.Generator) -> np.ndarray:
    """A textured habitat backdrop as a float32 (w, w, 3) array."""
    y, x = np.mgrid[0:w, 0:w].astype(np.float32)
    noise = rng.normal(0, 1, (w, w)).astype(np.float32)
    if habitat == "sand":
        base = np.array((222, 196, 138), np.float32)
        ph = rng.uniform(0, 6.3)
        wave = 14 * np.sin(y * 0.16 + 3 * np.sin(x * 0.05 + ph))[..., None]
        img = base + wave + 6 * noise[..., None]
    elif habitat == "grass":
        base = np.array((86, 158, 66), np.float32)
        blades = rng.normal(0, 1, (w // 10 + 1, w)).astype(np.float32)
        blades = np.repeat(blades, 10, axis=0)[:w]
        img = base + 22 * blades[..., None] * np.array((0.6, 1.0, 0.4), np.float32) + 4 * noise[..., None]
    elif habitat == "water":
        base = np.array((52, 112, 196), np.float32)
        ph = rng.uniform(0, 6.3)
        ripple = (np.sin(y * 0.55 + 2.2 * np.sin(x * 0.09 + ph)) > 0.82).astype(np.float32)
        img = base + 60 * ripple[..., None] + 4 * noise[..., None]
    elif habitat == "snow":
        base = np.array((232, 238, 246), np.float32)
        shade = (y / w * 18)[..., None] * np.array((1.0, 0.7, 0.1), np.float32)
        img = base - shade + 5 * noise[..., None]
    elif habitat == "rocks":
        img = np.full((w, w, 3), 128, np.float32) + 4 * noise[..., None]
        for _ in range(9):
            cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, w), rng.uniform(8, 26), rng.uniform(6, 18)
            inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
            img[inside] = rng.uniform(88, 170) + 3 * noise[inside][:, None]
    elif habitat == "sky":
        top, bottom = np.array((96, 164, 236), np.float32), np.array((190, 222, 250), np.float32)
        t = (y / w)[..., None]
        img = top * (1 - t) + bottom * t
        for _ in range(3):
            cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, w), rng.uniform(14, 30), rng.uniform(6, 12)
            inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
            img[inside] = 250
    else:
        raise ValueError(f"unknown habitat {habitat!r}")
    return np.clip(img, 0, 255)


def _outline(shape: str, r: float) -> list[tuple[float, float]]:
    """The body outline in local coordinates (x right, y down), centred on the origin."""
    if shape in ("round", "oval", "long"):
        rx, ry = {"round": (r, r), "oval": (1.2 * r, 0.78 * r), "long": (1.6 * r, 0.48 * r)}[shape]
        return [(rx * math.cos(t), ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    if shape == "triangular":
        return [(0, -1.05 * r), (1.1 * r, 0.8 * r), (-1.1 * r, 0.8 * r)]
    if shape == "boxy":
        s = 0.88 * r
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "diamond":
        return [(0, -1.2 * r), (0.9 * r, 0), (0, 1.2 * r), (-0.9 * r, 0)]
    raise ValueError(f"unknown body shape {shape!r}")


def _top(shape: str, r: float) -> float:
    """How far above the centre the body's top edge is (local y, negative = up)."""
    return {"round": -r, "oval": -0.78 * r, "long": -0.48 * r, "triangular": -1.05 * r, "boxy": -0.88 * r,
            "diamond": -1.2 * r}[shape]


class _Pen:
    """Draws polygons given in the creature's local frame (rotated, mirrored, translated) on two canvases:
    the colour picture and a label mask (0 background, 1 creature)."""

    def __init__(self, img: Image.Image, mask: Image.Image, cx: float, cy: float, angle: float, flip: int):
        self.draw, self.mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        self.cx, self.cy, self.flip = cx, cy, flip
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def to_image(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out = []
        for px, py in pts:
            px *= self.flip
            out.append((self.cx + px * self.cos - py * self.sin, self.cy + px * self.sin + py * self.cos))
        return out

    def polygon(self, pts: list[tuple[float, float]], fill: tuple[int, int, int]) -> None:
        p = self.to_image(pts)
        self.draw.polygon(p, fill=fill)
        self.mdraw.polygon(p, fill=1)

    def line(self, pts: list[tuple[float, float]], fill: tuple[int, int, int], width: int) -> None:
        p = self.to_image(pts)
        self.draw.line(p, fill=fill, width=width, joint="curve")
        self.mdraw.line(p, fill=1, width=width)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: tuple[int, int, int],
                outline: tuple[int, int, int] | None = None, width: int = 1) -> None:
        pts = [(x + rx * math.cos(t), y + ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24,
                                                                                    endpoint=False)]
        p = self.to_image(pts)
        if outline is None:
            self.draw.polygon(p, fill=fill)
            self.mdraw.polygon(p, fill=1)
        else:
            self.draw.polygon(p, outline=outline, width=width)
            self.mdraw.polygon(p, outline=1, width=width)


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, r: float, rng: random.Random) -> np.ndarray:
    """Where the pattern colour goes, in local body coordinates ``u`` (across) and ``v`` (down)."""
    if pattern == "plain":
        return np.zeros(u.shape, bool)
    if pattern == "striped":
        period = r * rng.uniform(0.55, 0.7)
        return ((u / period + rng.uniform(0, 1)) % 1.0) < 0.45
    if pattern == "spotted":
        cell = r * rng.uniform(0.5, 0.62)
        gu, gv = np.floor(u / cell), np.floor(v / cell)
        fu, fv = u / cell - gu - 0.5, v / cell - gv - 0.5
        offset = 0.18 * np.sin(gu * 12.9898 + gv * 78.233)
        return (fu - offset) ** 2 + (fv + offset) ** 2 < 0.29**2
    if pattern == "checkered":
        cell = r * rng.uniform(0.42, 0.52)
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2) == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def _draw_creature(attrs: dict[str, str], w: int, rng: random.Random,
                   nprng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw the creature over its habitat; return (picture float32 (w, w, 3), creature mask bool (w, w))."""
    bg = _background(attrs["habitat"], w, nprng)
    r = _BODY_RADIUS[attrs["size"]] * w * rng.uniform(0.9, 1.1)
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    cy = w / 2 + rng.uniform(-0.08, 0.14) * w
    angle = math.radians(rng.uniform(-18, 18))
    flip = rng.choice((-1, 1))
    body = np.clip(np.array(COLOURS[attrs["colour"]]) + [rng.randint(-14, 14) for _ in range(3)], 0, 255)
    body_rgb = tuple(int(c) for c in body)
    dark_body = _luma(body_rgb) < 90
    pattern_rgb = _shade(body_rgb, 2.2 if dark_body else 0.42)
    part_rgb = _shade(body_rgb, 1.6 if dark_body else 0.6)

    # the body and everything attached to it are drawn in label colours first, then coloured
    canvas = Image.new("RGB", (w, w), (0, 0, 0))
    mask = Image.new("L", (w, w), 0)
    pen = _Pen(canvas, mask, cx, cy, angle, flip)
    shape, part = attrs["shape"], attrs["part"]
    top = _top(shape, r)
    if part == "wings":
        for side in (-1, 1):
            pen.ellipse(side * 0.95 * r, -0.25 * r, 0.55 * r, 0.3 * r, fill=_shade(body_rgb, 1.45))
    elif part == "tail":
        t = np.linspace(0, 1, 12)
        pts = [(0.8 * r + 1.1 * r * s, -0.1 * r - 0.8 * r * math.sin(s * 2.6)) for s in t]
        pen.line(pts, fill=part_rgb, width=max(2, int(0.16 * r)))
    elif part == "ring":
        pen.ellipse(0, top - 0.42 * r, 0.55 * r, 0.16 * r, fill=_RING, outline=_RING, width=max(2, int(0.09 * r)))
    pen.polygon(_outline(shape, r), fill=(1, 1, 1))
    if part == "crest":
        for k in (-1, 0, 1):
            x0 = 0.3 * r * k
            pen.polygon([(x0 - 0.14 * r, top + 0.1 * r), (x0 + 0.14 * r, top + 0.1 * r),
                         (x0 + 0.05 * k * r, top - (0.55 if k == 0 else 0.4) * r)], fill=part_rgb)
    elif part == "horns":
        for side in (-1, 1):
            x0 = side * 0.35 * r
            pen.polygon([(x0 - 0.12 * r, top + 0.12 * r), (x0 + 0.12 * r, top + 0.12 * r),
                         (x0 + side * 0.28 * r, top - 0.55 * r)], fill=_HORN)
    elif part == "antennae":
        for side in (-1, 1):
            x0, x1, y1 = side * 0.2 * r, side * 0.5 * r, top - 0.62 * r
            pen.line([(x0, top + 0.05 * r), (x1, y1)], fill=part_rgb, width=max(1, int(0.07 * r)))
            pen.ellipse(x1, y1, 0.12 * r, 0.12 * r, fill=part_rgb)

    # colour the body: label pixels (1, 1, 1) get body colour and pattern, in body coordinates
    arr = np.asarray(canvas, dtype=np.float32)
    is_body = np.all(arr == 1, axis=-1)
    yy, xx = np.mgrid[0:w, 0:w].astype(np.float32)
    dx, dy = (xx - cx) * flip, yy - cy
    cosa, sina = math.cos(angle), math.sin(angle)
    u = dx * cosa + (yy - cy) * sina * flip
    v = -(xx - cx) * sina + dy * cosa
    pat = _pattern_mask(attrs["pattern"], u, v, r, rng)
    arr[is_body] = body
    arr[is_body & pat] = pattern_rgb
    creature = np.asarray(mask, dtype=bool)
    out = np.where(creature[..., None], arr, bg)

    # eyes on top of the body and pattern
    img = Image.fromarray(out.astype(np.uint8))
    eye_pen = _Pen(img, Image.new("L", (w, w)), cx, cy, angle, flip)
    n_eyes = {"one": 1, "two": 2, "three": 3}[attrs["eyes"]]
    eye_r = (0.24 if n_eyes == 1 else 0.15) * r
    eye_y = top * 0.45 if shape not in ("triangular", "diamond") else top * 0.2
    for k in range(n_eyes):
        ex = (k - (n_eyes - 1) / 2) * 0.36 * r
        eye_pen.ellipse(ex, eye_y, eye_r, eye_r, fill=(250, 250, 250))
        eye_pen.ellipse(ex + 0.25 * eye_r, eye_y, 0.5 * eye_r, 0.5 * eye_r, fill=(15, 15, 15))
    return np.asarray(img, dtype=np.float32), creature


def _edges(gray: np.ndarray, threshold: float) -> np.ndarray:
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, 1:] = np.abs(np.diff(gray, axis=1))
    gy[1:, :] = np.abs(np.diff(gray, axis=0))
    return (gx + gy) > threshold


def _stylise(pic: np.ndarray, creature: np.ndarray, style: str, size: int, attrs: dict[str, str],
             nprng: np.random.Generator) -> Image.Image:
    """Turn a drawing at twice the output size into an image of ``style`` at ``size`` pixels."""
    w = pic.shape[0]
    if style == "photo":
        y, x = np.mgrid[0:w, 0:w].astype(np.float32)
        light = 1.08 - 0.22 * (x + y) / (2 * w)
        out = pic * light[..., None] + nprng.normal(0, 7, pic.shape)
        img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
        return img.resize((size, size), Image.BILINEAR)
    if style == "painting":
        soft = Image.fromarray(pic.astype(np.uint8)).resize((w // 3, w // 3), Image.BILINEAR)
        soft = ImageOps.posterize(soft.resize((w, w), Image.BILINEAR), 3)
        strokes = nprng.normal(0, 1, (w, w // 6 + 1)).astype(np.float32)
        strokes = np.repeat(strokes, 6, axis=1)[:, :w]
        arr = (np.asarray(soft, dtype=np.float32) - 128) * 1.1 + 140 + 12 * strokes[..., None]
        arr += np.array((10, 4, -8), np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        return img.resize((size, size), Image.BILINEAR)
    if style == "cartoon":
        flat_bg = np.median(pic[~creature], axis=0) if (~creature).any() else np.full(3, 200.0)
        arr = np.where(creature[..., None], pic, flat_bg)
        gray = arr.mean(axis=-1)
        line = _edges(gray, 40) | _edges(creature.astype(np.float32) * 255, 100)
        line = line | np.roll(line, 1, axis=0) | np.roll(line, 1, axis=1)
        arr[line] = 20
        return Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.BOX)
    if style == "pixel":
        small = Image.fromarray(pic.astype(np.uint8)).resize((size // 2, size // 2), Image.BOX)
        small = small.quantize(colors=12, method=Image.Quantize.MEDIANCUT).convert("RGB")
        return small.resize((size, size), Image.NEAREST)
    if style == "sketch":
        gray = pic.mean(axis=-1)
        line = _edges(gray, 55) | _edges(creature.astype(np.float32) * 255, 100)
        y, x = np.mgrid[0:w, 0:w]
        hatch = ((x + y) % 6 < 2).astype(np.float32)
        tint = np.where(creature, 0.55 + 0.3 * hatch, 0.12 * hatch)[..., None]
        arr = _PAPER * (1 - tint) + pic * tint
        arr[line] = arr[line] * 0.25 + 40
        arr += nprng.normal(0, 3, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        return img.resize((size, size), Image.BOX)
    raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}")


def render(attrs: dict[str, str], style: str, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """Render one individual with attributes ``attrs`` in ``style`` as a ``size`` x ``size`` RGB image.

    ``attrs`` holds the world's attribute keys (shape, colour, pattern, part, habitat, size, eyes), e.g.
    from ``spec.instance_attributes``. The same (attrs, style, seed, size) always gives the same pixels.
    """
    rng = random.Random(seed * 7919 + 17)
    nprng = np.random.default_rng(seed)
    w = size * _SCALE
    pic, creature = _draw_creature(attrs, w, rng, nprng)
    return _stylise(pic, creature, style, size, attrs, nprng)
