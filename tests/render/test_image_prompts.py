"""The image prompts' regions: several characters on a page each draw in their own strip (the drawing itself is
tested in tests/identities/test_image_prompt.py)."""

from storybook.render.image_prompts import region_masks


def test_region_masks_split_the_picture_into_strips_left_to_right():
    masks = region_masks(3, 6, 2)
    assert masks.shape == (1, 3, 2, 6)
    assert masks[0, :, 0].tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]
