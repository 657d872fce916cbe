"""The renderer on a GPU's terms, checked on the CPU: region masks handed to diffusers on the pipeline's device and in
its dtype, made once; one pipeline alive across a switch; a DreamBooth UNet loaded instead of the base one."""

import gc
import weakref

import pytest
import torch

from storybook import registry
from storybook.book import RenderSettings, load_book
from storybook.render.configure import update_config
from storybook.render.pages import open_renderer
from storybook.render.renderer import ImageJob, Renderer
from storybook.tiny_model import build_tokenizer
from storybook.training.personalize import build_identity
from tests.render.test_pages import new_book

pytestmark = pytest.mark.slow


def test_two_characters_masks_reach_diffusers_at_the_latents_size_on_the_pipelines_device_and_dtype(
    home, sample_photos, tiny_ip_adapter, monkeypatch
):
    for name in ("Mia", "Rex"):
        registry.add_character(home, name, sample_photos, build_tokenizer())
        build_identity(home, name, "ip-adapter", adapter=tiny_ip_adapter, image_scale=1.0)
    renderer = Renderer(home, "tiny", dtype="bf16")  # what a GPU draws in; bf16 on this CPU, slowly
    renderer.load_identities(["mia", "rex"])
    handed = []
    pipeline_call = type(renderer.pipeline).__call__

    def spy(pipeline, *args, **kwargs):
        handed.append(kwargs["cross_attention_kwargs"]["ip_adapter_masks"][0])
        return pipeline_call(pipeline, *args, **kwargs)

    monkeypatch.setattr(type(renderer.pipeline), "__call__", spy)
    settings = RenderSettings(steps=2)
    for seed in (1, 2):
        renderer.draw([ImageJob("two toddlers", "", seed, ("mia", "rex"))], settings, 2)
    first, second = handed
    assert first.shape == (1, 2, 16, 16)  # the tiny model's 32 px picture, latents at half its size
    assert first.device == renderer.device and first.dtype == renderer.dtype == torch.bfloat16
    assert second is first  # made once, not per call


def test_a_renderer_switch_frees_the_old_pipeline_before_the_new_one_loads(studio, monkeypatch):
    book = load_book(new_book(studio, characters=("Mia",)))
    first = open_renderer(studio, book)
    old_unet = weakref.ref(first.pipeline.unet)
    alive_at_load = []
    import storybook.render.renderer

    real_load = storybook.render.renderer.load_pipeline

    def load_pipeline(*args, **kwargs):
        gc.collect()
        alive_at_load.append(old_unet() is not None)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(storybook.render.renderer, "load_pipeline", load_pipeline)
    update_config(studio, {"safety_checker": "off"})  # another setting: the renderer cannot draw the book as it is
    second = open_renderer(studio, book, first)
    assert alive_at_load == [False]  # one pipeline at a time: the old one was gone when the new one loaded
    assert second is not first and second.pipeline is not None and not first.fits(book.render.model, None)
    assert open_renderer(studio, book, second) is second  # a renderer that fits is kept


def test_a_dreambooth_renderer_loads_the_identitys_unet_instead_of_the_base_one(home, sample_photos, monkeypatch):
    from diffusers import UNet2DConditionModel

    registry.add_character(home, "Mia", sample_photos, build_tokenizer())
    quick = {"steps": 2, "prior_preservation": False, "checkpoint_every": 5}
    build_identity(home, "Mia", "dreambooth", overrides=quick, show_progress=False, sample_grids=False)
    loaded = []
    real = UNet2DConditionModel.from_pretrained.__func__

    def from_pretrained(cls, path, *args, **kwargs):
        loaded.append(str(path))
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", classmethod(from_pretrained))
    renderer = Renderer(home, "tiny", dreambooth="mia")
    assert len(loaded) == 1 and loaded[0].endswith("identity/unet")  # the base UNet never loads
    trained = registry.identity_folder(home, "mia") / "unet"
    expected = UNet2DConditionModel.from_pretrained(trained)
    for (name, value), (_, reference) in zip(
        renderer.pipeline.unet.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert torch.equal(value, reference), name
