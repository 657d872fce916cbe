import random
from dataclasses import replace

import numpy as np
import pytest

from storybook.lab import world
from storybook.photos import MIN_SIDE, load_photos

SIGNATURE_WORDS = {*world.HAT_SHAPES, *world.HAT_COLOURS, "stripes", "dots", "star", "hat", "pattern"}


def test_the_same_scene_always_draws_the_same_pixels_and_another_seed_draws_others():
    rng = random.Random(3)
    scene = world.random_scene(rng, world.random_toddler(rng, held_out=False), "beach")
    assert world.draw_scene(scene).tobytes() == world.draw_scene(scene).tobytes()
    assert world.draw_scene(scene).size == (64, 64)
    assert world.draw_scene(scene, 256).size == (256, 256)
    moved = world.random_scene(random.Random(4), scene.toddler, "beach")
    assert world.draw_scene(moved).tobytes() != world.draw_scene(scene).tobytes()


def test_every_setting_draws_a_different_background():
    scene = world.random_scene(random.Random(0), world.random_toddler(random.Random(0), held_out=False))
    corners = {world.draw_scene(replace(scene, setting=s)).getpixel((1, 1)) for s in [*world.SETTINGS, world.PLAIN]}
    assert len(corners) == len(world.SETTINGS) + 1
    with pytest.raises(ValueError, match="Unknown setting"):
        world.draw_scene(replace(scene, setting="moon base"))


def test_held_out_toddlers_share_neither_signature_nor_attribute_combination_with_any_training_toddler():
    signatures = {
        (hat, colour, pattern) for hat in world.HAT_SHAPES for colour in world.HAT_COLOURS for pattern in world.PATTERNS
    }
    combinations = {
        (hair, style, skin, outfit)
        for hair in world.HAIR_COLOURS
        for style in world.HAIR_STYLES
        for skin in world.SKIN_TONES
        for outfit in world.OUTFIT_COLOURS
    }
    held_out_signatures = {
        s for s in signatures if world.has_held_out_signature(world.Toddler("red", "curly", "light", "red", *s))
    }
    held_out_combinations = {
        c for c in combinations if world.has_held_out_attributes(world.Toddler(*c, "cap", "pink", "plain"))
    }
    assert (len(signatures), len(held_out_signatures)) == (144, 24)
    assert (len(combinations), len(held_out_combinations)) == (288, 35)
    rng = random.Random(0)
    training = [world.random_toddler(rng, held_out=False) for _ in range(2000)]
    held_out = [world.random_toddler(rng, held_out=True) for _ in range(100)]
    assert not {t.signature for t in training} & held_out_signatures
    assert not {t.attributes for t in training} & held_out_combinations
    assert all(t.signature in held_out_signatures and t.attributes in held_out_combinations for t in held_out)
    for field, values in world.ATTRIBUTES.items():  # every single value is still trained: only combinations are new
        assert {getattr(t, field) for t in training} == set(values)
    assert world.is_held_out(world.DEMO_TODDLER)


def test_captions_say_the_attributes_and_setting_but_never_the_signature():
    rng = random.Random(1)
    for _ in range(300):
        scene = world.random_scene(rng, world.random_toddler(rng, held_out=False))
        text = world.caption(scene)
        assert scene.toddler.description in text
        assert world.SETTING_PHRASES[scene.setting] in text
        assert text.endswith(world.STYLE)
        assert not SIGNATURE_WORDS & set(text.replace(",", " ").split()) - set(scene.toddler.attributes)
        assert scene.toddler.description not in world.caption(scene, describe=False)
    photo = world.caption(world.photo_scene(world.DEMO_TODDLER, 0))
    assert photo == "a photo of a toddler with curly red hair and light skin in a yellow shirt on a plain background"


def test_the_hat_mask_covers_the_hat_alone_and_follows_its_shape():
    rng = random.Random(3)
    scene = replace(world.random_scene(rng, world.DEMO_TODDLER, "park"), friend=None, object=None)
    hat = np.asarray(world.hat_mask(scene)) > 127
    toddler = np.asarray(world.toddler_mask(scene)) > 127
    assert 4 < hat.sum() < 0.25 * toddler.sum()  # a few pixels, part of the toddler's
    assert (hat & ~toddler).sum() <= 2  # on the toddler's silhouette (up to a pixel of smooth edge)
    rows = np.flatnonzero(hat.any(axis=1))
    assert rows.max() < np.flatnonzero(toddler.any(axis=1)).mean()  # at the top of the toddler
    cone = world.hat_mask(replace(scene, toddler=replace(world.DEMO_TODDLER, hat_shape="cone")))
    assert (np.asarray(cone) > 127).sum() != hat.sum()  # another shape covers other pixels
    white = replace(scene, toddler=replace(world.DEMO_TODDLER, hat_colour="white"))
    assert (np.asarray(world.hat_mask(white)) > 127).sum() == hat.sum()  # whatever the hat's own colour


def test_story_form_captions_say_the_action_setting_description_and_style_like_a_story_page():
    rng = random.Random(2)
    for _ in range(100):
        scene = world.random_scene(rng, world.random_toddler(rng, held_out=False))
        action, description, style = world.story_caption(scene, style="soft watercolor").split("; ")
        assert action.startswith("a toddler ") and action.endswith(world.SETTING_PHRASES[scene.setting])
        assert description == f"a toddler: {scene.toddler.description}" and style == "soft watercolor"
        assert world.story_caption(scene, describe=False) == f"{action}; {world.STYLE}"


def test_page_prompts_ask_for_twelve_pages_in_known_settings():
    prompts = world.page_prompts("zorv toddler")
    assert len(prompts) == len(world.page_settings()) == 12
    for prompt, setting in zip(prompts, world.page_settings(), strict=True):
        assert prompt.startswith("zorv toddler, ") and world.SETTING_PHRASES[setting] in prompt


def test_registration_photos_pass_the_registry_checks(tmp_path):
    paths = world.write_photos(tmp_path, world.DEMO_TODDLER, count=5)
    images = load_photos(paths)
    assert len(images) == 5 and all(min(image.size) >= MIN_SIDE for image in images)


def test_story_scenes_show_the_toddler_large_with_the_hat_always_in_the_frame():
    rng = random.Random(5)
    areas = {}
    for heights in (world.STORY_HEIGHTS, world.FULL_BODY_HEIGHTS):
        masks = []
        for _ in range(100):
            scene = world.random_scene(rng, world.random_toddler(rng, held_out=False), heights=heights)
            scene = replace(scene, pose=rng.choice(["jumping", scene.pose]), friend=None, object=None)
            mask = np.asarray(world.toddler_mask(scene, 64)) > 127
            assert not mask[0].any(), scene  # nothing of the toddler, hat included, touches the top edge
            masks.append(mask)
        areas[heights] = np.mean([mask.mean() for mask in masks])
    assert areas[world.STORY_HEIGHTS] > 1.5 * areas[world.FULL_BODY_HEIGHTS]


def test_the_toddler_mask_covers_what_the_scene_draws_of_the_toddler():
    rng = random.Random(2)
    scene = replace(world.random_scene(rng, world.DEMO_TODDLER, "beach"), friend=None, object=None)
    other = replace(scene, toddler=replace(world.DEMO_TODDLER, hair_colour="black", outfit="blue", hat_colour="gold"))
    changed = np.abs(np.asarray(world.draw_scene(scene), float) - np.asarray(world.draw_scene(other), float)).sum(-1)
    mask = np.asarray(world.toddler_mask(scene))
    near = np.pad(mask > 0, 1)  # on the mask or next to it (the reduced edges ring by a pixel)
    near = np.max([near[1 + dy : 65 + dy, 1 + dx : 65 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    assert near[changed > 30].all()  # every pixel a new look repaints lies on the mask
    assert (mask > 127).sum() > 1.2 * (changed > 30).sum()  # which also covers the face, arms and legs
