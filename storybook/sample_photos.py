"""Sample "photos" of a cartoon toddler, drawn from code, so the demo and tests register a character offline."""

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SKIN = (241, 194, 160)
HAIR = (196, 72, 38)  # curly red hair
RAINCOAT = (246, 200, 40)  # yellow raincoat
BACKGROUNDS = [(120, 180, 230), (150, 210, 140), (235, 225, 200), (200, 170, 220), (250, 200, 180)]


def draw_toddler(seed: int, size: int = 320) -> Image.Image:
    """One photo of the sample toddler: the same face, hair and raincoat, at a pose and place that vary with `seed`."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), BACKGROUNDS[seed % len(BACKGROUNDS)])
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # background clutter, so no two photos look alike
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(10, 40)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    scale = rng.uniform(0.75, 1.0)
    cx, cy = size / 2 + rng.uniform(-30, 30), size * 0.42 + rng.uniform(-20, 20)
    head = 62 * scale
    draw.rounded_rectangle(  # raincoat
        (cx - 1.5 * head, cy + 0.9 * head, cx + 1.5 * head, cy + 4 * head), radius=int(head / 2), fill=RAINCOAT
    )
    for angle in range(0, 360, 30):  # curls around the head
        dx, dy = head * 0.95 * math.cos(math.radians(angle)), head * 0.95 * math.sin(math.radians(angle)) - head * 0.1
        curl = head * 0.38
        draw.ellipse((cx + dx - curl, cy + dy - curl, cx + dx + curl, cy + dy + curl), fill=HAIR)
    draw.ellipse((cx - head * 0.85, cy - head, cx + head * 0.85, cy + head), fill=SKIN)
    eye_y, eye_dx, eye_r = cy - head * 0.15, head * 0.33, head * 0.11
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(40, 30, 30))
        draw.line((ex - eye_r * 1.5, eye_y - eye_r * 2.2, ex + eye_r * 1.5, eye_y - eye_r * 2.4), fill=HAIR, width=4)
    draw.ellipse((cx - head * 0.08, cy + head * 0.05, cx + head * 0.08, cy + head * 0.22), fill=(215, 160, 130))
    draw.arc(
        (cx - head * 0.35, cy + head * 0.2, cx + head * 0.35, cy + head * 0.6), 20, 160, fill=(170, 60, 60), width=4
    )
    return image.filter(ImageFilter.GaussianBlur(1))


def write_sample_photos(folder: Path, count: int = 5) -> list[Path]:
    """Save `count` sample photos as JPEGs in `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"toddler-{seed}.jpg"
        draw_toddler(seed).save(path, quality=92)
        paths.append(path)
    return paths
