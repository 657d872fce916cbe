"""The AUTOMATIC1111 hypernetwork (the founding paper's method): for each attention context width a pair of small
residual MLPs that transform the context before `to_k` and before `to_v` (`x + mlp(x) * strength`; the query is
untouched), in self-attention (the UNet's widths) and cross-attention (the text's width) alike, the base weights frozen.

Saved as the webui writes it (`<token>.pt`: `{width: (k_state_dict, v_state_dict), "layer_structure": ...}`), which
A1111 and ComfyUI's hypernetwork loader read; files the webui wrote load here too. A `.pt` is only ever read with
`torch.load(weights_only=True)`, so loading one never runs code. Applied with forward pre-hooks on the attention
layers' `to_k` / `to_v` rather than an attention processor, so that it composes with IP-Adapter's processors.
"""

import inspect
import pickle
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import Attention
from torch import nn

from storybook.errors import ModelError
from storybook.identities.base import MethodPart, ModelShape, SaveRequest, Trainable, freeze
from storybook.identities.record import IdentityMetadata
from storybook.identities.training_config import TrainingConfig
from storybook.registry import Character
from storybook.weights import unreadable

LAYER_STRUCTURE = (1, 2, 1)  # the webui's default: widths of the MLP's layers in multiples of the context width
ACTIVATION = "linear"  # the webui's default
# What the webui builds for each activation name: its own seven, then every class in torch.nn.modules.activation by its
# lower-cased name (ComfyUI knows linear, relu, leakyrelu, elu, swish, tanh, sigmoid, softsign, mish).
ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    name.lower(): cls
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
    if cls.__module__ == "torch.nn.modules.activation"
} | {
    "linear": None,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
INIT_STD = 0.01  # the webui's "Normal" initialisation: weights N(0, 0.01), biases 0

# Published practice: the founding paper and the webui's guides (lr 1e-5, batch 1, ~10,000 steps; no class images;
# the photos' own captions after the prompt, the webui's [filewords]).
DEFAULTS = {
    "real": {
        "steps": 10_000,
        "learning_rate": 1e-5,
        "prior_preservation": False,
        "photo_captions": True,
        "num_class_images": 0,
        "checkpoint_every": 500,
    },
    "tiny": {
        "steps": 60,
        "learning_rate": 1e-2,
        "batch_size": 4,
        "prior_preservation": False,
        "photo_captions": True,
        "num_class_images": 0,
        "checkpoint_every": 20,
    },
    "mini": {
        "steps": 600,
        "learning_rate": 1e-3,
        "batch_size": 4,
        "prior_preservation": False,
        "photo_captions": True,
        "num_class_images": 0,
        "checkpoint_every": 100,
    },
}


class HypernetworkModule(nn.Module):
    """One residual MLP on contexts of width `width`: x + mlp(x) * strength, its layers built and numbered as the
    webui's (per step: Linear, the activation, LayerNorm, Dropout where `dropout[step + 1]` > 0)."""

    def __init__(
        self,
        width: int,
        structure: tuple[float, ...] = LAYER_STRUCTURE,
        activation: str = ACTIVATION,
        layer_norm: bool = False,
        activate_output: bool = False,
        dropout: tuple[float, ...] | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(len(structure) - 1):
            size = int(width * structure[index + 1])
            layers.append(nn.Linear(int(width * structure[index]), size))
            last = index == len(structure) - 2
            if ACTIVATIONS[activation] is not None and (not last or activate_output):
                layers.append(ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(nn.LayerNorm(size))
            if dropout is not None and dropout[index + 1] > 0:
                layers.append(nn.Dropout(p=dropout[index + 1]))
        self.linear = nn.Sequential(*layers)

    def forward(self, context: torch.Tensor, strength: float) -> torch.Tensor:
        """The transformed context; (B, tokens, width) -> the same shape."""
        return context + self.linear(context) * strength


def webui_dropout(structure: tuple[float, ...], use_dropout: bool, last_layer_dropout: bool) -> tuple[float, ...]:
    """The dropout per layer the webui assumes for a file without `dropout_structure` (its parse_dropout_structure)."""
    if not use_dropout:
        return (0.0,) * len(structure)
    return (0.0, *[0.3] * (len(structure) - 3), 0.3 if last_layer_dropout else 0.0, 0.0)


class Hypernetwork(nn.Module):
    """The (k, v) module pairs by context width, and the strength they act with."""

    def __init__(self, pairs: dict[int, tuple[HypernetworkModule, HypernetworkModule]], options: dict):
        super().__init__()
        self.pairs = nn.ModuleDict({str(width): nn.ModuleList(pair) for width, pair in pairs.items()})
        self.options = options  # layer_structure, activation_func, is_layer_norm, activate_output as built
        self.strength = 1.0

    def transform(self, context: torch.Tensor, which: int) -> torch.Tensor:
        """`context` through the k (`which` 0) or v (1) module of its width; unchanged for widths it has none for."""
        width = str(context.shape[-1])
        if width not in self.pairs or self.strength == 0:  # nn.ModuleDict has no .get
            return context
        return self.pairs[width][which](context, self.strength)


def context_widths(unet: nn.Module) -> list[int]:
    """Every attention context width of `unet`: its self-attention widths and the text's width, in order."""
    widths = {module.to_k.in_features for module in unet.modules() if isinstance(module, Attention)}
    return sorted(widths, key=lambda width: (width != unet.config.cross_attention_dim, width))


def new_hypernetwork(widths: list[int]) -> Hypernetwork:
    """A freshly initialised hypernetwork of the webui's default shape for `widths` (from torch's global RNG)."""
    pairs = {width: (HypernetworkModule(width), HypernetworkModule(width)) for width in widths}
    network = Hypernetwork(pairs, webui_options(LAYER_STRUCTURE, ACTIVATION, False, False))
    for layer in network.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=INIT_STD)
            nn.init.zeros_(layer.bias)
    return network


def webui_options(structure, activation: str, layer_norm: bool, activate_output: bool) -> dict:
    """The keys besides the weights that the webui writes and reads (no dropout: ComfyUI cannot load it)."""
    return {
        "layer_structure": [float(size) for size in structure],
        "activation_func": activation,
        "is_layer_norm": layer_norm,
        "weight_initialization": "Normal",
        "use_dropout": False,
        "dropout_structure": [0.0] * len(structure),
        "activate_output": activate_output,
        "last_layer_dropout": False,
    }


@dataclass
class Attached:
    """A hypernetwork hooked into a UNet: taken out again by removing the hooks."""

    network: Hypernetwork
    hooks: list[torch.utils.hooks.RemovableHandle]


ATTACHED: "weakref.WeakKeyDictionary[nn.Module, dict[str, Attached]]" = weakref.WeakKeyDictionary()


def attach(unet: nn.Module, name: str, network: Hypernetwork) -> None:
    """Hook `network` into every attention layer of `unet` under `name`, before `to_k` and `to_v` (before a LoRA
    layer's base weights, where a LoRA wraps them). Several hypernetworks chain in the order attached."""

    def hook(which: int):
        return lambda module, args: (network.transform(args[0], which), *args[1:])

    handles = []
    for attention in (module for module in unet.modules() if isinstance(module, Attention)):
        for which, layer in enumerate((attention.to_k, attention.to_v)):
            handles.append(getattr(layer, "base_layer", layer).register_forward_pre_hook(hook(which)))
    ATTACHED.setdefault(unet, {})[name] = Attached(network, handles)


def detach(unet: nn.Module, name: str) -> None:
    """Remove the hypernetwork attached as `name` from `unet`."""
    for handle in ATTACHED[unet].pop(name).hooks:
        handle.remove()


def prepare(pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, dtype: torch.dtype) -> Trainable:
    """Freeze the UNet and text encoder (in `dtype`) and hook a new hypernetwork of the webui's default shape into the
    UNet."""
    for module in (pipeline.unet, pipeline.text_encoder):
        freeze(module, dtype)
    network = new_hypernetwork(context_widths(pipeline.unet)).to(pipeline.unet.device)
    attach(pipeline.unet, character.slug, network)
    return Trainable(text_changes=False, modules={"hypernetwork": network})


def webui_file(network: Hypernetwork, name: str, request: SaveRequest) -> dict:
    """`network` in the layout the webui's `Hypernetwork.save` writes: int width keys holding (k, v) state dicts."""
    contents: dict = {
        int(width): tuple(OrderedDict((k, v.detach().float().cpu()) for k, v in m.state_dict().items()) for m in pair)
        for width, pair in network.pairs.items()
    }
    contents |= network.options | {
        "step": request.steps_done,
        "name": name,
        "sd_checkpoint": request.base_fingerprint[:10],
        "sd_checkpoint_name": request.base_model,
        "optional_info": None,
    }
    return contents


def save(
    folder: Path, pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, request: SaveRequest
) -> list[str]:
    """Write the trained hypernetwork as `<token>.pt` in the webui's layout; return its name."""
    network = ATTACHED[pipeline.unet][character.slug].network
    file_name = f"{character.token}.pt"
    torch.save(webui_file(network, character.token, request), folder / file_name)
    return [file_name]


def read_hypernetwork(path: Path) -> Hypernetwork:
    """A hypernetwork file as the webui writes it (also older files with `linear1`/`linear2` keys), read without
    running code. Raises ModelError for a file that is not one, would run code, or uses a layout not supported."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError):  # torch's words advise unsafe loading: not shown
        raise ModelError(
            f"{unreadable(path)} (only plain weights are loaded, never code): it is not a hypernetwork file that can "
            "be read safely."
        ) from None
    if not isinstance(contents, dict) or not any(isinstance(key, int) for key in contents):
        raise ModelError(f"{path} is not a hypernetwork file (no per-width weights).")
    try:
        structure = tuple(float(size) for size in contents.get("layer_structure") or LAYER_STRUCTURE)
        dropout = tuple(float(p) for p in contents.get("dropout_structure") or ()) or webui_dropout(
            structure, bool(contents.get("use_dropout", False)), bool(contents.get("last_layer_dropout", False))
        )
    except (TypeError, ValueError):
        raise ModelError(f"{path} is damaged: its layer or dropout structure is not a list of numbers.") from None
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1 or len(dropout) != len(structure):
        raise ModelError(f"{path} is damaged: a layer structure starts and ends with 1, one dropout value per layer.")
    if not all(0 <= p < 1 for p in dropout):
        raise ModelError(f"{path} is damaged: dropout values must be from 0 to below 1.")
    activation = contents.get("activation_func") or "linear"
    if activation not in ACTIVATIONS:
        raise ModelError(f"{path} uses the activation {activation!r}, which the webui does not know either.")
    layer_norm = bool(contents.get("is_layer_norm", False))
    activate_output = bool(contents.get("activate_output", True))  # the webui's default for files without the key
    pairs = {}
    for width, states in ((key, value) for key, value in contents.items() if isinstance(key, int)):
        try:
            pair = tuple(
                HypernetworkModule(width, structure, activation, layer_norm, activate_output, dropout) for _ in range(2)
            )
        except (TypeError, ValueError, RuntimeError) as error:  # an activation that needs arguments, a bad width
            raise ModelError(f"{path}: cannot build its layers of width {width} ({error}).") from None
        if not isinstance(states, (tuple, list)) or len(states) != 2 or not all(isinstance(s, dict) for s in states):
            raise ModelError(f"{path} is damaged: width {width} does not hold a (k, v) pair of weights.")
        for module, state in zip(pair, states, strict=True):
            state = {
                key.replace("linear1.", "linear.0.").replace("linear2.", "linear.1."): v for key, v in state.items()
            }
            try:
                module.load_state_dict(state)
            except RuntimeError as error:
                raise ModelError(
                    f"{path}: the weights of width {width} do not fit its layer structure ({error})."
                ) from None
        pairs[width] = pair
    return Hypernetwork(pairs, webui_options(structure, activation, layer_norm, activate_output)).eval()


def load(pipeline: DiffusionPipeline, folder: Path, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Hook the identity's hypernetwork into the pipeline's UNet as `adapter_name`, at strength 0 until set."""
    network = read_hypernetwork(folder / f"{metadata.token}.pt").to(pipeline.unet.device, pipeline.unet.dtype)
    network.strength = 0.0
    attach(pipeline.unet, adapter_name, network)


def unload(pipeline: DiffusionPipeline, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Take the hypernetwork attached as `adapter_name` out of the pipeline's UNet."""
    detach(pipeline.unet, adapter_name)


def set_strength(pipeline: DiffusionPipeline, adapter_name: str, strength: float) -> None:
    """The multiplier the hypernetwork attached as `adapter_name` acts with (0: the base model)."""
    ATTACHED[pipeline.unet][adapter_name].network.strength = strength


def trained_parameters(shape: ModelShape, config: TrainingConfig) -> int:
    """The (k, v) MLP pairs of every context width."""
    return shape.hypernetwork


PART = MethodPart(
    "hypernetwork", DEFAULTS, prepare, save, load, unload, set_strength, trained_parameters=trained_parameters
)
