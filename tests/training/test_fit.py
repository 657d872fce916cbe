"""The memory plan fits a run to its card before anything loads: the settings as asked where they fit, the first
policies that fit where they do not (never a setting the user gave), or a one-line refusal naming what would fit;
checked for 8, 12, 16, 24 and 80 GiB cards on the public SD 1.5 and SDXL shapes."""

import pytest

from storybook.errors import TrainingError
from storybook.training.fit import Card, default_settings, fit_to_card
from storybook.training.vram import GIB, SD15_SHAPE, SDXL_SHAPE

FUSED = "Adafactor fused into the backward pass"


def card(gib: int, bf16: bool = True, bitsandbytes: bool = False) -> Card:
    return Card(gib * GIB, bf16, bitsandbytes)


def fit(shape, method: str, gib: int, **card_traits):
    """`method` at its defaults on a card of `gib` GiB."""
    on = card(gib, **card_traits)
    return fit_to_card(shape, default_settings(method, shape, on), on)


@pytest.mark.parametrize("gib", [8, 12, 16, 24, 80])
def test_every_sd15_method_fits_an_8_gib_card_or_larger_at_most_with_a_switch(gib):
    for method in ("lora", "dreambooth", "textual-inversion", "hypernetwork", "pivotal"):
        fitted = fit(SD15_SHAPE, method, gib)
        assert fitted.need.on_card <= gib * GIB
    assert fit(SD15_SHAPE, "lora", gib).switches == []  # a LoRA fits as it is


def test_sd15_dreambooth_switches_to_fused_adafactor_below_16_gib_and_8_bit_adam_first_where_installed():
    assert fit(SD15_SHAPE, "dreambooth", 24).switches == []
    assert fit(SD15_SHAPE, "dreambooth", 16).switches == []
    assert fit(SD15_SHAPE, "dreambooth", 12).switches == [FUSED]
    fitted = fit(SD15_SHAPE, "dreambooth", 12, bitsandbytes=True)  # 8-bit AdamW is the default there: it fits
    assert fitted.switches == [] and fitted.config.optimizer == "adamw-8bit"
    assert fit(SD15_SHAPE, "dreambooth", 8).config.fused_backward


def test_sdxl_dreambooth_fits_24_and_16_gib_with_fused_adafactor_12_with_bf16_weights_and_is_refused_on_8():
    assert fit(SDXL_SHAPE, "dreambooth", 80).switches == []
    for gib in (24, 16):
        fitted = fit(SDXL_SHAPE, "dreambooth", gib)
        assert fitted.switches == [FUSED] and not fitted.config.full_bf16
    twelve = fit(SDXL_SHAPE, "dreambooth", 12)
    assert twelve.switches == [FUSED, "bf16 weights"] and twelve.config.full_bf16
    with pytest.raises(TrainingError) as refused:
        fit(SDXL_SHAPE, "dreambooth", 8)
    message = str(refused.value)
    assert "\n" not in message and "dreambooth on SDXL needs about" in message
    assert "more than this 8.0 GiB card" in message and "use a card of 12 GiB" in message


def test_without_bf16_sdxl_dreambooth_cannot_take_the_bf16_policy_and_is_refused_on_12_gib():
    with pytest.raises(TrainingError, match="more than this 12.0 GiB card"):
        fit(SDXL_SHAPE, "dreambooth", 12, bf16=False)  # fp16's loss scaler cannot run fused either


def test_sdxl_lora_fits_12_gib_and_up_as_it_is_and_8_gib_refusal_names_the_card_that_fits():
    for gib in (12, 16, 24, 80):
        assert fit(SDXL_SHAPE, "lora", gib).switches == []
    with pytest.raises(TrainingError, match=r"no method fits SDXL on this 8.0 GiB card, or use a card of 12 GiB"):
        fit(SDXL_SHAPE, "lora", 8)


def test_a_setting_the_user_gave_is_never_switched_and_the_refusal_names_another_method_that_fits():
    twelve = card(12)
    asked = default_settings("dreambooth", SDXL_SHAPE, twelve).model_copy(update={"optimizer": "adamw"})
    with pytest.raises(TrainingError) as refused:
        fit_to_card(SDXL_SHAPE, asked, twelve, fixed=frozenset({"optimizer"}))
    message = str(refused.value)
    assert "(as set: optimizer)" in message and "train --method lora instead (about" in message


def test_a_larger_card_than_needed_changes_nothing():
    config = default_settings("lora", SDXL_SHAPE, card(80))
    fitted = fit_to_card(SDXL_SHAPE, config, card(80))
    assert fitted.config == config and fitted.switches == []


def test_a_resumed_run_keeps_its_settings_and_is_refused_with_that_reason():
    sixteen = card(16)
    config = default_settings("dreambooth", SDXL_SHAPE, sixteen)
    with pytest.raises(TrainingError, match=r"\(a resumed run keeps the settings it started with\)"):
        fit_to_card(SDXL_SHAPE, config, sixteen, fixed=frozenset(type(config).model_fields))


def test_class_images_are_drawn_as_many_at_a_time_as_the_card_fits():
    from storybook.training.plan import class_images_at_a_time

    assert class_images_at_a_time(SD15_SHAPE, card(8)) == 4
    assert class_images_at_a_time(SDXL_SHAPE, card(24)) == 4
    assert class_images_at_a_time(SDXL_SHAPE, card(12)) == 1
