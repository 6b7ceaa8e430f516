"""Draw the example input images for prompts/example_i2v.txt (deterministic, no downloads).

    python scripts/make_example_images.py            # writes prompts/images/*.png
    python scripts/make_example_images.py --out DIR

Three 512x320 procedural scenes: a lake at sunset, a red ball on grass, a lighthouse at dusk.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 512, 320
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "prompts" / "images"
Colour = tuple[int, int, int]


def vertical_gradient(height: int, width: int, stops: list[tuple[float, Colour]]) -> np.ndarray:
    """``(height, width, 3)`` uint8 gradient through colour ``stops`` at fractions ``0..1`` of the height."""
    positions = np.array([p for p, _ in stops])
    colours = np.array([c for _, c in stops], dtype=np.float64)
    y = np.linspace(0.0, 1.0, height)
    column = np.stack([np.interp(y, positions, colours[:, k]) for k in range(3)], axis=-1)
    return np.repeat(column[:, None, :], width, axis=1).round().astype(np.uint8)


def sunset_lake() -> Image.Image:
    """Orange-to-purple sky, a low sun, dark hills and its reflection on the water."""
    horizon = 200
    image = Image.fromarray(
        vertical_gradient(
            HEIGHT,
            WIDTH,
            [
                (0.0, (58, 42, 110)),
                (0.35, (196, 92, 120)),
                (0.6, (250, 160, 80)),
                (0.625, (40, 50, 90)),
                (1.0, (12, 20, 45)),
            ],
        )
    )
    draw = ImageDraw.Draw(image)
    sun_x, sun_y, r = 300, horizon - 22, 34
    draw.ellipse((sun_x - r, sun_y - r, sun_x + r, sun_y + r), fill=(255, 214, 120))
    # Hills: a smooth silhouette along the horizon.
    hills = [
        (x, horizon - 18 - 14 * math.sin(x / 47.0) - 9 * math.sin(x / 19.0 + 1.0))
        for x in range(0, WIDTH + 8, 8)
    ]
    draw.polygon([(0, horizon), *hills, (WIDTH, horizon)], fill=(34, 26, 60))
    # Reflection of the sun: short horizontal strokes that thin out with depth.
    for i, y in enumerate(range(horizon + 6, HEIGHT, 7)):
        half = max(4, 40 - 2 * i)
        draw.line((sun_x - half, y, sun_x + half, y), fill=(240, 170, 90), width=2)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def red_ball_on_grass() -> Image.Image:
    """A shaded red ball with its shadow on a green lawn under a blue sky."""
    image = Image.fromarray(
        vertical_gradient(
            HEIGHT,
            WIDTH,
            [(0.0, (120, 175, 235)), (0.42, (200, 225, 245)), (0.43, (96, 160, 70)), (1.0, (40, 110, 40))],
        )
    )
    draw = ImageDraw.Draw(image)
    # Grass blades: a fixed seed keeps the image identical on every run.
    rng = np.random.default_rng(7)
    for _ in range(900):
        x, y = int(rng.integers(0, WIDTH)), int(rng.integers(140, HEIGHT))
        length = 3 + (y - 130) // 25
        shade = int(rng.integers(60, 140))
        draw.line((x, y, x + int(rng.integers(-2, 3)), y - length), fill=(30, shade, 30), width=1)
    cx, cy, r = 250, 215, 52
    draw.ellipse((cx - r + 10, cy + r - 14, cx + r + 30, cy + r + 10), fill=(25, 70, 25))  # shadow
    # Ball: radial shading from a highlight at the upper left.
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    dist = np.hypot(xx - cx, yy - cy)
    inside = dist <= r
    light = np.clip(1.0 - np.hypot(xx - (cx - 18), yy - (cy - 20)) / (1.9 * r), 0.0, 1.0)
    pixels = np.asarray(image).copy()
    ball = np.stack([110 + 145 * light, 10 + 60 * light**3, 10 + 50 * light**3], axis=-1)
    pixels[inside] = ball[inside].round().astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.SMOOTH)


def lighthouse() -> Image.Image:
    """A lighthouse silhouette on a rocky point, with a light beam against a dusk sky and sea."""
    horizon = 230
    image = Image.fromarray(
        vertical_gradient(
            HEIGHT,
            WIDTH,
            [
                (0.0, (20, 30, 70)),
                (0.55, (90, 110, 170)),
                (0.71, (230, 180, 140)),
                (0.72, (30, 50, 80)),
                (1.0, (10, 20, 40)),
            ],
        )
    )
    beam = Image.new("L", (WIDTH, HEIGHT), 0)
    top_x, top_y = 370, 88
    ImageDraw.Draw(beam).polygon([(top_x, top_y), (0, 40), (0, 120)], fill=90)
    beam = beam.filter(ImageFilter.GaussianBlur(6))
    image = Image.composite(Image.new("RGB", image.size, (255, 240, 190)), image, beam)
    draw = ImageDraw.Draw(image)
    dark = (14, 14, 22)
    draw.polygon(
        [
            (300, HEIGHT),
            (320, horizon + 10),
            (350, horizon - 12),
            (420, horizon - 16),
            (470, horizon + 6),
            (512, HEIGHT),
        ],
        fill=dark,
    )
    draw.polygon([(355, horizon - 12), (362, 100), (378, 100), (385, horizon - 12)], fill=dark)  # tower
    draw.rectangle((356, 84, 384, 100), fill=dark)  # gallery
    draw.rectangle((362, 70, 378, 84), fill=(255, 236, 160))  # lamp room
    draw.polygon([(358, 70), (370, 58), (382, 70)], fill=dark)  # roof
    return image


SCENES: dict[str, Callable[[], Image.Image]] = {
    "sunset_lake.png": sunset_lake,
    "red_ball_grass.png": red_ball_on_grass,
    "lighthouse_dusk.png": lighthouse,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the example images used by prompts/example_i2v.txt.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, a read-only folder: the user's to fix
        print(f"error: --out {args.out}: cannot create the folder ({err.strerror or err}); choose another --out",
              file=sys.stderr)  # fmt: skip
        return 2
    for name, draw in SCENES.items():
        path = args.out / name
        image = draw()
        assert image.size == (WIDTH, HEIGHT), image.size
        image.save(path, optimize=True)
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
