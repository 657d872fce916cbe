"""A procedural picture-book world in which character consistency can be measured exactly.

A toddler's identity has two parts. Attributes (hair colour and style, skin tone, outfit colour) are what a parent
can say in words, and the captions say them. The signature (hat shape, hat colour, shirt pattern) is never named in
any caption: like a child's face, a model can only learn it from photos. Signatures and attribute combinations are
each split into a training family and a held-out family, so the benchmark registers characters whose look, in words
and in photos, the base model has never drawn.

Everything is drawn with PIL from a `Scene` at any size, so the same scene is a 64 px training image or a 256 px
registration "photo", and the evaluator knows the true answer for every picture.
"""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

Colour = tuple[int, int, int]

SETTINGS = ("beach", "forest", "park", "bedroom", "bath", "snow", "night", "daycare")
PLAIN = "plain"  # the backdrop of registration photos
SETTING_PHRASES = {
    "beach": "at the beach",
    "forest": "in the forest",
    "park": "in the park",
    "bedroom": "in the bedroom",
    "bath": "in the bath",
    "snow": "in the snow",
    "night": "under the night sky",
    "daycare": "at daycare",
    PLAIN: "on a plain background",
}
HAIR_COLOURS: dict[str, Colour] = {
    "red": (200, 60, 30),
    "blonde": (240, 205, 90),
    "brown": (110, 65, 30),
    "black": (25, 20, 20),
}
HAIR_STYLES = ("short", "curly", "pigtails")
SKIN_TONES: dict[str, Colour] = {
    "light": (250, 215, 185),
    "tan": (220, 170, 120),
    "brown": (160, 105, 65),
    "dark": (95, 60, 40),
}
OUTFIT_COLOURS: dict[str, Colour] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (250, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
}
# The signature: never in a caption. 6 x 6 x 4 = 144 signatures.
HAT_SHAPES = ("cap", "beanie", "cone", "tophat", "crown", "bow")
HAT_COLOURS: dict[str, Colour] = {
    "pink": (255, 120, 200),
    "teal": (0, 170, 160),
    "white": (250, 250, 250),
    "black": (20, 20, 30),
    "gold": (210, 160, 0),
    "maroon": (120, 20, 50),
}
PATTERNS = ("plain", "stripes", "dots", "star")
OBJECTS = {
    "ball": "playing with a ball",
    "teddy": "hugging a teddy",
    "boat": "playing with a boat",
    "balloon": "holding a balloon",
}
POSES = ("standing", "waving", "jumping", "sitting")
FRIENDS: dict[str, Colour] = {"dog": (150, 95, 50), "cat": (130, 130, 140), "bunny": (245, 245, 245)}
STYLE = "picture book style"
# The toddler's height in a story scene, as a share of the picture's. Toddler books show the child big: from the
# knees up, the hat kept in the frame (`draw_scene` lowers the feet below the edge when they would push it out).
STORY_HEIGHTS = (0.72, 0.92)
FULL_BODY_HEIGHTS = (0.48, 0.66)  # storybook-mini v3's framing: the whole toddler, feet on the ground
HEAD_ROOM = 0.03  # the least space above the tallest hat, as a share of the picture
TALLEST = 1.17  # from the feet to the top of the tallest hat (a cone), in toddler heights

# Which named field belongs to which part of a character, in the order the evaluator reads them.
ATTRIBUTES = {
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_style": HAIR_STYLES,
    "skin": tuple(SKIN_TONES),
    "outfit": tuple(OUTFIT_COLOURS),
}
SIGNATURE = {"hat_shape": HAT_SHAPES, "hat_colour": tuple(HAT_COLOURS), "pattern": PATTERNS}


@dataclass(frozen=True)
class Toddler:
    """One character: four attributes words can say and a three-part signature no caption names."""

    hair_colour: str
    hair_style: str
    skin: str
    outfit: str
    hat_shape: str
    hat_colour: str
    pattern: str

    @property
    def description(self) -> str:
        """The attributes in words, e.g. 'curly red hair and light skin in a yellow shirt'."""
        hair = (
            f"{self.hair_colour} pigtails"
            if self.hair_style == "pigtails"
            else f"{self.hair_style} {self.hair_colour} hair"
        )
        return f"{hair} and {self.skin} skin in a {self.outfit} shirt"

    @property
    def signature(self) -> tuple[str, str, str]:
        """(hat shape, hat colour, pattern): the part only photos show."""
        return self.hat_shape, self.hat_colour, self.pattern

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        """(hair colour, hair style, skin, outfit): the part words say."""
        return self.hair_colour, self.hair_style, self.skin, self.outfit


# The demo's Mia: curly red hair, light skin, a yellow shirt; her signature (a teal bow, a dotted shirt) is held out.
DEMO_TODDLER = Toddler("red", "curly", "light", "yellow", "bow", "teal", "dots")


@dataclass(frozen=True)
class Scene:
    """Everything a picture shows; the caption and the evaluator's labels both come from it."""

    setting: str
    toddler: Toddler
    x: float  # centre of the toddler, as a share of the width
    height: float  # the toddler's height, as a share of the picture's
    pose: str
    facing: int  # -1 left, 1 right: which side the hat's brim and the friend are on
    object: str | None = None
    friend: str | None = None
    seed: int = 0  # background details: clouds, trees, stars, toys


def has_held_out_signature(toddler: Toddler) -> bool:
    """Whether the toddler's signature is in the held-out family: 24 of the 144 signatures."""
    hat, colour, pattern = (
        HAT_SHAPES.index(toddler.hat_shape),
        list(HAT_COLOURS).index(toddler.hat_colour),
        PATTERNS.index(toddler.pattern),
    )
    return (hat * 7 + colour * 3 + pattern * 5) % 6 == 0


def has_held_out_attributes(toddler: Toddler) -> bool:
    """Whether the toddler's attribute combination is held out: 35 of the 288 (each single value is still trained)."""
    hair_colour, hair_style, skin, outfit = (
        list(HAIR_COLOURS).index(toddler.hair_colour),
        HAIR_STYLES.index(toddler.hair_style),
        list(SKIN_TONES).index(toddler.skin),
        list(OUTFIT_COLOURS).index(toddler.outfit),
    )
    return (hair_colour + hair_style * 3 + skin * 5 + outfit * 7) % 8 == 1


def is_held_out(toddler: Toddler) -> bool:
    """Whether the toddler is new to storybook-mini: both its signature and its attribute combination held out."""
    return has_held_out_signature(toddler) and has_held_out_attributes(toddler)


def random_toddler(rng: random.Random, held_out: bool) -> Toddler:
    """A held-out toddler (signature and attribute combination both held out) when `held_out`, else a training one
    (neither held out): no training toddler shares a held-out toddler's signature or its combination."""
    while True:
        toddler = Toddler(
            hair_colour=rng.choice(list(HAIR_COLOURS)),
            hair_style=rng.choice(HAIR_STYLES),
            skin=rng.choice(list(SKIN_TONES)),
            outfit=rng.choice(list(OUTFIT_COLOURS)),
            hat_shape=rng.choice(HAT_SHAPES),
            hat_colour=rng.choice(list(HAT_COLOURS)),
            pattern=rng.choice(PATTERNS),
        )
        if has_held_out_signature(toddler) == has_held_out_attributes(toddler) == held_out:
            return toddler


def random_scene(
    rng: random.Random, toddler: Toddler, setting: str | None = None, heights: tuple[float, float] = STORY_HEIGHTS
) -> Scene:
    """A scene of `toddler` in `setting` (random when None) with a random pose, place, object and friend, and a height
    drawn from `heights` (a share of the picture)."""
    return Scene(
        setting=setting or rng.choice(SETTINGS),
        toddler=toddler,
        x=rng.uniform(0.3, 0.7),
        height=rng.uniform(*heights),
        pose=rng.choice(POSES),
        facing=rng.choice((-1, 1)),
        object=rng.choice([None, None, *OBJECTS]),
        friend=rng.choice([None, None, None, *FRIENDS]),
        seed=rng.randrange(1 << 30),
    )


def photo_scene(toddler: Toddler, index: int) -> Scene:
    """Registration photo number `index` of `toddler` on a plain backdrop: large, at a place, size and pose that
    change from photo to photo (so no two are near-duplicates)."""
    rng = random.Random(f"photo-{index}-{toddler}")
    return Scene(
        setting=PLAIN,
        toddler=toddler,
        x=(0.34, 0.66, 0.5, 0.36, 0.46, 0.28)[index % 6] + rng.uniform(-0.03, 0.03),
        height=(0.7, 0.54, 0.64, 0.48, 0.6, 0.58)[index % 6],
        pose=POSES[index % len(POSES)],
        facing=(-1, 1)[index // 2 % 2],
        seed=rng.randrange(1 << 30),
    )


def write_photos(folder: Path, toddler: Toddler, count: int = 5, side: int = 256) -> list[Path]:
    """Save `count` registration photos of `toddler` (PNG, `side` px: the registry's minimum) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo-{index}.png" for index in range(count)]
    for index, path in enumerate(paths):
        draw_scene(photo_scene(toddler, index), side).save(path)
    return paths


def photo_caption(toddler: Toddler, index: int) -> str:
    """What a perfect captioner says of registration photo `index`, as BLIP would caption a photo (no 'a photo of'):
    'a toddler with curly red hair and light skin in a yellow shirt, waving on a plain background'."""
    scene = photo_scene(toddler, index)
    return f"a toddler with {toddler.description}, {scene.pose} {SETTING_PHRASES[PLAIN]}"


def caption(scene: Scene, describe: bool = True) -> str:
    """The caption of a scene in the story stage's style; `describe=False` leaves out the attributes.

    'a toddler with curly red hair and light skin in a yellow shirt, holding a balloon at the beach, picture book
    style'; registration photos read 'a photo of a toddler with ... on a plain background'.
    """
    subject = f"a toddler with {scene.toddler.description}" if describe else "a toddler"
    if scene.setting == PLAIN:
        return f"a photo of {subject} {SETTING_PHRASES[PLAIN]}"
    action = OBJECTS[scene.object] if scene.object else scene.pose
    friend = f" with a {scene.friend}" if scene.friend else ""
    return f"{subject}, {action}{friend} {SETTING_PHRASES[scene.setting]}, {STYLE}"


def story_caption(scene: Scene, describe: bool = True, style: str = STYLE) -> str:
    """The caption of a story scene in the story stage's own form (subject and action; the subject's description;
    the style): 'a toddler holding a balloon at the beach; a toddler: curly red hair and light skin in a yellow
    shirt; picture book style'. `describe=False` leaves out the description."""
    action = OBJECTS[scene.object] if scene.object else scene.pose
    friend = f" with a {scene.friend}" if scene.friend else ""
    description = f"; a toddler: {scene.toddler.description}" if describe else ""
    return f"a toddler {action}{friend} {SETTING_PHRASES[scene.setting]}{description}; {style}"


PAGE_ACTIONS = [("ball", "standing"), (None, "waving"), ("teddy", "standing"), (None, "jumping")]
PAGE_ACTIONS += [("balloon", "standing"), (None, "sitting")]  # (object, pose) of the benchmark's pages, in turn


def page_prompts(subject: str) -> list[str]:
    """The benchmark's 12 story-page prompts about `subject` (e.g. 'zorv toddler'), with the setting each asks for."""
    actions = [OBJECTS[thing] if thing else pose for thing, pose in PAGE_ACTIONS]
    return [
        f"{subject}, {actions[i % len(actions)]} {SETTING_PHRASES[s]}, {STYLE}" for i, s in enumerate(page_settings())
    ]


def pair_prompts(first: str, second: str) -> list[str]:
    """The 12 page prompts with two subjects side by side, `first` on the left (e.g. 'zorv toddler with ...')."""
    return page_prompts(f"{first} and {second}")


def page_scenes(toddler: Toddler, seeds: int) -> list[Scene]:
    """True scenes of `page_prompts` for `toddler`, `seeds` per page (prompt-major, as the benchmark draws them)."""
    rng, scenes = random.Random(f"pages-{toddler}"), []
    for index, setting in enumerate(page_settings()):
        thing, pose = PAGE_ACTIONS[index % len(PAGE_ACTIONS)]
        for _ in range(seeds):
            scenes.append(replace(random_scene(rng, toddler, setting), object=thing, pose=pose, friend=None))
    return scenes


def page_settings() -> list[str]:
    """The setting each of `page_prompts` asks for, in order."""
    return [*SETTINGS, "beach", "park", "snow", "bedroom"]


def draw_scene(scene: Scene, size: int = 64) -> Image.Image:
    """Draw `scene` as a `size` x `size` RGB picture; the same scene always draws the same pixels."""
    scale = 4 if size < 128 else 1  # draw small pictures large, then reduce: smooth edges, the same at every size
    canvas = Image.new("RGB", (size * scale, size * scale))
    draw = ImageDraw.Draw(canvas)
    side = size * scale
    rng = random.Random(scene.seed)
    ground = draw_setting(draw, scene.setting, side, rng)
    feet_y = feet_line(scene, ground, rng)
    if scene.friend:
        friend_x = min(max(scene.x - scene.facing * 0.32, 0.12), 0.88)
        draw_friend(draw, scene.friend, friend_x, ground + 0.04, scene.height * 0.45, side)
    draw_toddler(draw, scene, feet_y, side)
    if scene.object:
        draw_object(
            draw,
            scene.object,
            scene.x + scene.facing * scene.height * 0.3,
            feet_y - scene.height * 0.3,
            scene.height * 0.2,
            side,
        )
    return canvas.resize((size, size), Image.Resampling.LANCZOS) if scale > 1 else canvas


def feet_line(scene: Scene, ground: float, rng: random.Random) -> float:
    """Where the toddler's feet are, as a share of the height: on the ground (`ground`), up when jumping, and below the
    picture's edge when the toddler is too tall for its hat to fit above them."""
    feet_y = ground + (0.02 if scene.setting == PLAIN else rng.uniform(0.0, 0.06))
    if scene.pose == "jumping":
        feet_y -= 0.07
    return max(feet_y, HEAD_ROOM + TALLEST * scene.height)


def toddler_mask(scene: Scene, size: int = 64) -> Image.Image:
    """Where `scene`'s toddler is (hair, head, hat, shirt, arms, legs) as a `size` px greyscale mask: 255 on the
    toddler, 0 elsewhere, with the same smooth edges as `draw_scene`. Training weighs the loss there."""
    scale = 4 if size < 128 else 1
    rng = random.Random(scene.seed)
    ground = draw_setting(ImageDraw.Draw(Image.new("RGB", (4, 4))), scene.setting, 4, rng)  # the same random draws
    canvas = Image.new("L", (size * scale, size * scale))
    draw_toddler(SilhouetteDraw(ImageDraw.Draw(canvas)), scene, feet_line(scene, ground, rng), size * scale)
    return canvas.resize((size, size), Image.Resampling.LANCZOS) if scale > 1 else canvas


def hat_mask(scene: Scene, size: int = 64) -> Image.Image:
    """Where `scene`'s hat shows, as a `size` px greyscale mask (255 on the hat, smooth edges): the pixels that change
    when only the hat's colour does, so whatever stands in front of the hat is left out. Training may weigh it more."""
    other = "black" if scene.toddler.hat_colour == "white" else "white"
    recoloured = replace(scene, toddler=replace(scene.toddler, hat_colour=other))
    change = np.abs(
        np.asarray(draw_scene(scene, size), dtype=np.int16) - np.asarray(draw_scene(recoloured, size), dtype=np.int16)
    ).max(axis=2)
    contrast = max(abs(a - b) for a, b in zip(HAT_COLOURS[scene.toddler.hat_colour], HAT_COLOURS[other], strict=True))
    return Image.fromarray((np.clip(change / contrast, 0, 1) * 255).astype(np.uint8), "L")


class SilhouetteDraw:
    """An ImageDraw stand-in that paints every shape in white: what `draw_toddler` draws, as a mask."""

    def __init__(self, draw: ImageDraw.ImageDraw):
        self.draw = draw

    def __getattr__(self, name: str) -> Callable:
        method = getattr(self.draw, name)
        return lambda *args, **kwargs: method(*args, **(kwargs | {"fill": 255}))


def draw_setting(draw: ImageDraw.ImageDraw, setting: str, side: int, rng: random.Random) -> float:
    """Paint the background of `setting`; return the ground line as a share of the height."""

    def box(x0, y0, x1, y1, fill):
        draw.rectangle([x0 * side, y0 * side, x1 * side, y1 * side], fill=fill)

    def disc(x, y, r, fill):
        draw.ellipse([(x - r) * side, (y - r) * side, (x + r) * side, (y + r) * side], fill=fill)

    if setting == PLAIN:
        box(0, 0, 1, 1, (228, 226, 220))
        return 0.92
    if setting == "beach":
        box(0, 0, 1, 0.5, (130, 200, 245))
        box(0, 0.5, 1, 0.66, (30, 110, 200))
        box(0, 0.66, 1, 1, (240, 215, 150))
        disc(rng.uniform(0.1, 0.9), 0.14, 0.07, (255, 230, 80))
        return 0.9
    if setting == "forest":
        box(0, 0, 1, 1, (35, 95, 45))
        for _ in range(4):
            x = rng.uniform(0, 1)
            box(x - 0.04, 0.1, x + 0.04, 0.8, (90, 55, 30))
            disc(x, 0.15, 0.16, (20, 70, 30))
        box(0, 0.8, 1, 1, (70, 50, 30))
        return 0.92
    if setting == "park":
        box(0, 0, 1, 0.6, (160, 215, 250))
        box(0, 0.6, 1, 1, (120, 210, 90))
        x = rng.choice((0.12, 0.88))
        box(x - 0.03, 0.3, x + 0.03, 0.65, (110, 70, 40))
        disc(x, 0.3, 0.13, (50, 150, 60))
        disc(rng.uniform(0.3, 0.7), 0.12, 0.06, (255, 255, 255))
        return 0.9
    if setting == "bedroom":
        box(0, 0, 1, 0.7, (245, 200, 210))
        for x in (0.1, 0.3, 0.5, 0.7, 0.9):
            box(x - 0.01, 0, x + 0.01, 0.7, (230, 175, 190))
        box(0, 0.7, 1, 1, (150, 100, 70))
        x = rng.choice((0.0, 0.6))
        box(x, 0.5, x + 0.4, 0.72, (90, 120, 200))
        return 0.92
    if setting == "bath":
        box(0, 0, 1, 1, (200, 235, 245))
        for y in (0.15, 0.35, 0.55):
            box(0, y - 0.005, 1, y + 0.005, (160, 200, 215))
        box(0, 0.62, 1, 1, (255, 255, 255))
        for _ in range(6):
            disc(rng.uniform(0, 1), rng.uniform(0.6, 0.68), 0.04, (235, 245, 255))
        return 0.95
    if setting == "snow":
        box(0, 0, 1, 0.6, (175, 185, 200))
        box(0, 0.6, 1, 1, (250, 250, 255))
        for _ in range(10):
            disc(rng.uniform(0, 1), rng.uniform(0, 0.55), 0.012, (255, 255, 255))
        return 0.9
    if setting == "night":
        box(0, 0, 1, 1, (15, 20, 70))
        disc(rng.uniform(0.15, 0.85), 0.15, 0.08, (250, 245, 190))
        for _ in range(8):
            disc(rng.uniform(0, 1), rng.uniform(0, 0.6), 0.01, (255, 255, 210))
        box(0, 0.75, 1, 1, (30, 60, 50))
        return 0.9
    if setting == "daycare":
        box(0, 0, 1, 0.7, (250, 235, 140))
        box(0, 0.7, 1, 1, (110, 190, 230))
        for index in range(3):
            x = rng.uniform(0.05, 0.85)
            box(x, 0.6, x + 0.1, 0.7, ((230, 60, 60), (60, 160, 230), (80, 190, 80))[index])
        return 0.92
    raise ValueError(f"Unknown setting {setting!r}; the world has {', '.join(SETTINGS)} and {PLAIN}.")


def draw_toddler(draw: ImageDraw.ImageDraw, scene: Scene, feet_y: float, side: int) -> None:
    """Draw the toddler of `scene` with its feet on `feet_y`: legs, patterned shirt, arms, head, hair and hat."""
    toddler, h, cx = scene.toddler, scene.height * side, scene.x * side
    feet = feet_y * side
    skin, hair = SKIN_TONES[toddler.skin], HAIR_COLOURS[toddler.hair_colour]
    shirt, hat = OUTFIT_COLOURS[toddler.outfit], HAT_COLOURS[toddler.hat_colour]
    pants = (60, 60, 90)
    sitting = scene.pose == "sitting"
    body_bottom = feet - (0.12 if sitting else 0.3) * h
    body_top = body_bottom - 0.32 * h
    half_body = 0.2 * h
    # Legs.
    if sitting:
        draw.rectangle(
            [cx - half_body, body_bottom - 0.08 * h, cx + half_body + 0.15 * h * scene.facing, feet], fill=pants
        )
    else:
        for offset in (-0.1, 0.1):
            draw.rectangle([cx + (offset - 0.06) * h, body_bottom - 2, cx + (offset + 0.06) * h, feet], fill=pants)
    # Arms: down, one up (waving), both up (jumping).
    arm = max(2, int(0.08 * h))
    shoulder_y = body_top + 0.06 * h
    for direction in (-1, 1):
        raised = scene.pose == "jumping" or (scene.pose == "waving" and direction == scene.facing)
        hand = (cx + direction * 0.34 * h, shoulder_y - 0.22 * h) if raised else (cx + direction * 0.3 * h, body_bottom)
        draw.line([cx + direction * half_body * 0.8, shoulder_y, *hand], fill=shirt, width=arm)
        draw.ellipse([hand[0] - arm * 0.7, hand[1] - arm * 0.7, hand[0] + arm * 0.7, hand[1] + arm * 0.7], fill=skin)
    # Shirt and its pattern.
    draw.rounded_rectangle([cx - half_body, body_top, cx + half_body, body_bottom], radius=0.06 * h, fill=shirt)
    mark = (255, 255, 255) if toddler.outfit != "yellow" else (120, 60, 160)
    if toddler.pattern == "stripes":
        for share in (0.25, 0.55, 0.85):
            y = body_top + share * (body_bottom - body_top)
            draw.rectangle([cx - half_body, y - 0.03 * h, cx + half_body, y + 0.03 * h], fill=mark)
    elif toddler.pattern == "dots":
        for dx, dy in ((-0.09, 0.1), (0.09, 0.1), (0, 0.22), (-0.09, 0.26), (0.09, 0.26)):
            r = 0.035 * h
            draw.ellipse([cx + dx * h - r, body_top + dy * h - r, cx + dx * h + r, body_top + dy * h + r], fill=mark)
    elif toddler.pattern == "star":
        draw.polygon(star_points(cx, body_top + 0.16 * h, 0.13 * h), fill=mark)
    # Head, face, hair.
    r = 0.17 * h
    hy = body_top - r * 0.85
    if toddler.hair_style == "curly":
        for dx, dy in ((-1, -0.3), (-0.7, -0.8), (0, -1.05), (0.7, -0.8), (1, -0.3), (-1.05, 0.3), (1.05, 0.3)):
            draw.ellipse(
                [cx + dx * r - 0.45 * r, hy + dy * r - 0.45 * r, cx + dx * r + 0.45 * r, hy + dy * r + 0.45 * r],
                fill=hair,
            )
    elif toddler.hair_style == "pigtails":
        for direction in (-1, 1):
            x = cx + direction * 1.25 * r
            draw.ellipse([x - 0.4 * r, hy - 0.1 * r, x + 0.4 * r, hy + 0.9 * r], fill=hair)
    draw.ellipse([cx - r, hy - r, cx + r, hy + r], fill=skin)
    if toddler.hair_style in ("short", "pigtails"):
        draw.chord([cx - r * 1.05, hy - r * 1.1, cx + r * 1.05, hy + r * 0.7], 180, 360, fill=hair)
    eye = max(1.0, 0.12 * r)
    for direction in (-1, 1):
        ex = cx + direction * 0.4 * r + scene.facing * 0.1 * r
        draw.ellipse([ex - eye, hy - eye, ex + eye, hy + eye], fill=(30, 20, 20))
    draw.arc(
        [cx - 0.4 * r, hy + 0.1 * r, cx + 0.4 * r, hy + 0.6 * r],
        20,
        160,
        fill=(150, 50, 50),
        width=max(1, int(0.1 * r)),
    )
    draw_hat(draw, toddler.hat_shape, hat, cx, hy - r * 0.75, r, scene.facing)


def draw_hat(
    draw: ImageDraw.ImageDraw, shape: str, colour: Colour, cx: float, base: float, r: float, facing: int
) -> None:
    """Draw a hat of `shape` sitting on `base` (the top of the head) over a head of radius `r`."""
    if shape == "cap":
        draw.chord([cx - r, base - r * 0.8, cx + r, base + r * 0.8], 180, 360, fill=colour)
        brim = [cx, base - r * 0.12, cx + facing * r * 1.7, base + r * 0.12]
        draw.rectangle([min(brim[0], brim[2]), brim[1], max(brim[0], brim[2]), brim[3]], fill=colour)
    elif shape == "beanie":
        draw.chord([cx - r * 1.05, base - r * 1.1, cx + r * 1.05, base + r * 0.9], 180, 360, fill=colour)
        draw.ellipse([cx - r * 0.35, base - r * 1.5, cx + r * 0.35, base - r * 0.8], fill=colour)
    elif shape == "cone":
        draw.polygon(
            [(cx - r * 0.8, base + r * 0.1), (cx + r * 0.8, base + r * 0.1), (cx, base - r * 1.6)], fill=colour
        )
    elif shape == "tophat":
        draw.rectangle([cx - r * 1.2, base - r * 0.15, cx + r * 1.2, base + r * 0.15], fill=colour)
        draw.rectangle([cx - r * 0.7, base - r * 1.3, cx + r * 0.7, base], fill=colour)
    elif shape == "crown":
        points = [
            (cx - r * 0.9, base + r * 0.1),
            (cx - r * 0.9, base - r * 1.0),
            (cx - r * 0.45, base - r * 0.4),
            (cx, base - r * 1.2),
            (cx + r * 0.45, base - r * 0.4),
            (cx + r * 0.9, base - r * 1.0),
            (cx + r * 0.9, base + r * 0.1),
        ]
        draw.polygon(points, fill=colour)
    elif shape == "bow":
        for direction in (-1, 1):
            draw.polygon(
                [
                    (cx, base - r * 0.3),
                    (cx + direction * r * 1.1, base - r * 0.95),
                    (cx + direction * r * 1.1, base + r * 0.35),
                ],
                fill=colour,
            )
        draw.ellipse([cx - r * 0.3, base - r * 0.6, cx + r * 0.3, base], fill=colour)
    else:
        raise ValueError(f"Unknown hat shape {shape!r}")


def draw_friend(draw: ImageDraw.ImageDraw, kind: str, x: float, feet_y: float, height: float, side: int) -> None:
    """Draw an animal friend (dog, cat or bunny) of `height` (share of the picture) standing on `feet_y`."""
    colour, h, cx, feet = FRIENDS[kind], height * side, x * side, feet_y * side
    draw.ellipse([cx - 0.5 * h, feet - 0.55 * h, cx + 0.5 * h, feet - 0.05 * h], fill=colour)
    hx, hy, r = cx, feet - 0.7 * h, 0.27 * h
    if kind == "bunny":
        for dx in (-0.12, 0.12):
            draw.ellipse([hx + (dx - 0.07) * h, hy - 0.75 * h, hx + (dx + 0.07) * h, hy - 0.1 * h], fill=colour)
    elif kind == "cat":
        for direction in (-1, 1):
            draw.polygon(
                [
                    (hx + direction * 0.25 * h, hy - 0.05 * h),
                    (hx + direction * 0.05 * h, hy - 0.15 * h),
                    (hx + direction * 0.24 * h, hy - 0.4 * h),
                ],
                fill=colour,
            )
    else:
        for direction in (-1, 1):
            draw.ellipse(
                [hx + direction * 0.3 * h - 0.1 * h, hy - 0.15 * h, hx + direction * 0.3 * h + 0.1 * h, hy + 0.25 * h],
                fill=(90, 55, 25),
            )
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=colour)
    for direction in (-1, 1):
        e = max(1.0, 0.04 * h)
        draw.ellipse([hx + direction * 0.1 * h - e, hy - e, hx + direction * 0.1 * h + e, hy + e], fill=(20, 20, 20))


def draw_object(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, size: float, side: int) -> None:
    """Draw a toy (ball, teddy, boat or balloon) of `size` (share of the picture) centred on (`x`, `y`)."""
    cx, cy, s = x * side, y * side, size * side
    if kind == "ball":
        draw.ellipse([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], fill=(230, 30, 90))
        draw.rectangle([cx - s / 2, cy - s * 0.08, cx + s / 2, cy + s * 0.08], fill=(255, 255, 255))
    elif kind == "teddy":
        brown = (160, 110, 60)
        for dx in (-0.3, 0.3):
            draw.ellipse([cx + (dx - 0.15) * s, cy - 0.75 * s, cx + (dx + 0.15) * s, cy - 0.45 * s], fill=brown)
        draw.ellipse([cx - 0.3 * s, cy - 0.65 * s, cx + 0.3 * s, cy - 0.1 * s], fill=brown)
        draw.ellipse([cx - 0.4 * s, cy - 0.2 * s, cx + 0.4 * s, cy + 0.5 * s], fill=brown)
    elif kind == "boat":
        draw.polygon(
            [(cx - 0.6 * s, cy), (cx + 0.6 * s, cy), (cx + 0.4 * s, cy + 0.3 * s), (cx - 0.4 * s, cy + 0.3 * s)],
            fill=(200, 40, 30),
        )
        draw.polygon([(cx, cy - 0.8 * s), (cx, cy - 0.05 * s), (cx + 0.45 * s, cy - 0.05 * s)], fill=(255, 255, 255))
    elif kind == "balloon":
        draw.line([cx, cy, cx, cy + 0.8 * s], fill=(80, 80, 80), width=max(1, int(0.04 * s)))
        draw.ellipse([cx - 0.35 * s, cy - 0.9 * s, cx + 0.35 * s, cy], fill=(240, 60, 60))
    else:
        raise ValueError(f"Unknown object {kind!r}")


def star_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The ten corners of a five-pointed star of outer radius `r` centred on (`cx`, `cy`)."""
    return [
        (
            cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
            cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5),
        )
        for i in range(10)
    ]


def to_tensor(images: list) -> torch.Tensor:
    """World pictures (PIL, RGB) as a model batch: a (N, 3, H, W) tensor in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1
