"""The A1111 hypernetwork on the tiny model: it learns, it is saved as the webui writes it, webui files load here,
it draws only on its character's pages, and a file that would run code is refused."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from storybook import registry
from storybook.book import RenderSettings
from storybook.errors import ModelError
from storybook.identities import load_identity, unload_identity
from storybook.identities.hypernetwork import read_hypernetwork, set_strength
from storybook.render.renderer import ImageJob, Renderer
from storybook.training.loop import train_identity
from tests.training.pictures import fresh_pipeline, render

pytestmark = pytest.mark.slow
WEBUI_KEYS = {"layer_structure", "activation_func", "is_layer_norm", "activate_output", "step", "name", "sd_checkpoint"}


@pytest.mark.parametrize("captions", ["identifier", "class"])
def test_it_learns_the_photos_and_is_saved_as_the_webui_writes_it(home, mia, captions):
    metadata = train_identity(home, "Mia", "hypernetwork", overrides={"captions": captions}, show_progress=False)
    assert metadata.photo_loss_after < 0.97 * metadata.photo_loss_before
    folder = registry.character_dir(home, "Mia") / "identity"
    assert metadata.files == [f"{mia.token}.pt"]

    contents = torch.load(folder / f"{mia.token}.pt", weights_only=True)  # plain weights: A1111 and ComfyUI read it so
    assert contents.keys() >= WEBUI_KEYS and contents["layer_structure"] == [1.0, 2.0, 1.0]
    widths = sorted(key for key in contents if isinstance(key, int))
    assert widths == [32, 64]  # the tiny UNet's attention widths; its text's width is 32 too
    k_state, v_state = contents[64]
    assert list(k_state) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]
    assert k_state["linear.0.weight"].shape == (128, 64) and v_state["linear.1.weight"].shape == (64, 128)

    pipeline = fresh_pipeline(home)
    base = render(pipeline, mia.instance_prompt)
    class_only = render(pipeline, "a photo of toddler")
    load_identity(pipeline, folder, adapter_name="mia")
    np.testing.assert_array_equal(render(pipeline, mia.instance_prompt), base)  # loaded at strength 0
    set_strength(pipeline, "mia", 1.0)
    assert not np.allclose(render(pipeline, mia.instance_prompt), base, atol=1e-3)
    assert not np.allclose(render(pipeline, "a photo of toddler"), class_only, atol=1e-3)  # it changes the class too
    unload_identity(pipeline, metadata, "mia")
    np.testing.assert_array_equal(render(pipeline, mia.instance_prompt), base)


def test_the_renderer_draws_it_on_its_character_s_pages_only(home, mia):
    train_identity(home, "Mia", "hypernetwork", overrides={"steps": 10}, show_progress=False)
    renderer = Renderer(home, "tiny")
    renderer.pipeline.set_progress_bar_config(disable=True)
    settings = RenderSettings(steps=6)
    without = ImageJob(f"{mia.token} toddler at the beach", "", 0, ())
    with_mia = ImageJob(f"{mia.token} toddler at the beach", "", 0, ("mia",))
    before = np.asarray(renderer.draw([without], settings, 6)[0])
    renderer.load_identities(["mia"])
    assert not np.array_equal(np.asarray(renderer.draw([with_mia], settings, 6)[0]), before)
    assert np.array_equal(np.asarray(renderer.draw([without], settings, 6)[0]), before)


def test_a_file_the_webui_wrote_loads_and_transforms_the_context_as_the_webui_does(tmp_path):
    # relu with layer norm and an activated output: the webui numbers its layers Linear 0, ReLU 1, LayerNorm 2,
    # Linear 3, ReLU 4, LayerNorm 5.
    generator = torch.Generator().manual_seed(0)

    def module_state(width: int) -> OrderedDict:
        shapes = {"linear.0": (2 * width, width), "linear.2": (2 * width,), "linear.3": (width, 2 * width)}
        shapes["linear.5"] = (width,)
        state = OrderedDict()
        for name, shape in shapes.items():
            state[f"{name}.weight"] = torch.randn(shape, generator=generator)
            state[f"{name}.bias"] = torch.randn(shape[:1], generator=generator)
        return state

    written = {
        768: (module_state(768), module_state(768)),
        320: (module_state(320), module_state(320)),
        "layer_structure": [1, 2, 1],
        "activation_func": "relu",
        "is_layer_norm": True,
        "weight_initialization": "Normal",
        "use_dropout": False,
        "step": 10_000,
        "name": "paper",
        "sd_checkpoint": "7460a6fa",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }  # no "activate_output" key: the webui then activates the output
    torch.save(written, tmp_path / "paper.pt")

    network = read_hypernetwork(tmp_path / "paper.pt")
    network.strength = 0.5
    context = torch.randn(2, 77, 768, generator=generator)
    k = written[768][0]
    hidden = F.layer_norm(
        F.relu(F.linear(context, k["linear.0.weight"], k["linear.0.bias"])),
        (1536,),
        k["linear.2.weight"],
        k["linear.2.bias"],
    )
    out = F.layer_norm(
        F.relu(F.linear(hidden, k["linear.3.weight"], k["linear.3.bias"])),
        (768,),
        k["linear.5.weight"],
        k["linear.5.bias"],
    )
    torch.testing.assert_close(network.transform(context, 0), context + out * 0.5)
    assert torch.equal(network.transform(torch.ones(1, 4, 640), 1), torch.ones(1, 4, 640))  # no module of width 640

    # Trained with dropout (no dropout_structure key): the webui puts a Dropout after the first step's ReLU, so the
    # second Linear is layer 3; at inference dropout does nothing.
    state = OrderedDict((k, written[320][0][k]) for k in ("linear.0.weight", "linear.0.bias"))
    state |= {"linear.3.weight": written[320][0]["linear.3.weight"], "linear.3.bias": written[320][0]["linear.3.bias"]}
    dropped = {
        320: (state, state),
        "layer_structure": [1, 2, 1],
        "activation_func": "relu",
        "use_dropout": True,
        "last_layer_dropout": True,
        "activate_output": False,
    }
    torch.save(dropped, tmp_path / "dropout.pt")
    network = read_hypernetwork(tmp_path / "dropout.pt")
    context = torch.randn(1, 5, 320, generator=generator)
    hidden = F.relu(F.linear(context, state["linear.0.weight"], state["linear.0.bias"]))
    expected = context + F.linear(hidden, state["linear.3.weight"], state["linear.3.bias"])
    torch.testing.assert_close(network.transform(context, 1), expected)


class RunsCode:
    """An object whose unpickling would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({768: RunsCode(marker), "layer_structure": [1, 2, 1]}, tmp_path / "hostile.pt")
    with pytest.raises(ModelError, match="never code"):
        read_hypernetwork(tmp_path / "hostile.pt")
    assert not marker.exists()
    torch.save({"layer_structure": [1, 2, 1]}, tmp_path / "empty.pt")
    with pytest.raises(ModelError, match="not a hypernetwork file"):
        read_hypernetwork(tmp_path / "empty.pt")
