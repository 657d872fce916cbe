"""Shared fixtures: the tiny model is built once per test session; every test gets its own data root."""

import os
from datetime import datetime, timezone
from pathlib import Path

# isort: off
import storybook  # noqa: F401  first: it sets how torch's threads wait (GOMP_SPINCOUNT) before torch loads

# isort: on
import pytest
import torch

from storybook import registry
from storybook.models import TINY_MODEL_FOLDER
from storybook.sample_photos import write_sample_photos

# Test processes side by side (`make test` runs pytest-xdist's workers) share the cores: one torch thread each.
torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a model hub
os.environ.setdefault("STORYBOOK_MODEL", "tiny")  # the suite runs on the tiny model unless a test names another


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """The folder of an SDXL-shaped pipeline at toy sizes with random weights (`make_tiny_sdxl`), built once."""
    from storybook.tiny_model import make_tiny_sdxl

    return make_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl")


@pytest.fixture
def home(tmp_path) -> Path:
    """An empty data root."""
    root = tmp_path / "home"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> list[Path]:
    """Five drawn photos of the sample toddler (curly red hair, yellow raincoat)."""
    return write_sample_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def family_home(tmp_path) -> Path:
    """A data root with three registered characters, Mia (toddler), Rex (dog) and Bo (teddy bear), as records only."""
    root = tmp_path / "family"
    for name, class_noun, token, description in [
        ("Mia", "toddler", "zorv", "2-year-old girl, curly red hair, yellow raincoat"),
        ("Rex", "dog", "qwib", "small brown puppy"),
        ("Bo", "teddy bear", "plim", "patched blue teddy"),
    ]:
        photo = registry.PhotoRecord(
            original_name=f"IMG_{name}.HEIC", stored=f"photos/{name}.png", prepared=f"prepared/{name}.png", sha256="0"
        )
        registry.save_character(
            root,
            registry.Character(
                name=name,
                slug=name.lower(),
                class_noun=class_noun,
                description=description,
                token=token,
                photos=[photo],
                created_at=datetime.now(timezone.utc),
            ),
        )
    return root


@pytest.fixture(scope="session")
def trained_characters(tmp_path_factory, sample_photos) -> Path:
    """A `characters/` folder with two LoRA identities trained on the tiny model: Mia (toddler) and Rex (dog)."""
    from storybook.tiny_model import build_tokenizer
    from storybook.training.loop import train_identity

    root = tmp_path_factory.mktemp("trained-home")
    quick = {"steps": 20, "num_class_images": 4, "class_image_steps": 4, "checkpoint_every": 50}
    for name, class_noun, description in [
        ("Mia", "toddler", "curly red hair, yellow raincoat"),
        ("Rex", "dog", "small brown puppy"),
    ]:
        registry.add_character(
            root, name, sample_photos, build_tokenizer(), class_noun=class_noun, description=description
        )
        train_identity(root, name, "lora", overrides=quick, show_progress=False)
    return root / "characters"


@pytest.fixture
def studio(home, trained_characters) -> Path:
    """A data root with the tiny model and the trained Mia and Rex (shared, read-only)."""
    (home / "characters").symlink_to(trained_characters, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def tiny_ip_adapter(tmp_path_factory):
    """A random-weight IP-Adapter for the tiny model in h94/IP-Adapter's layout (`models/ip-adapter_sd15.safetensors`,
    `models/image_encoder/`), built offline; returns its AdapterSource."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from storybook.config import AdapterSource
    from storybook.identities.adapter_format import new_adapter_weights, save_adapter_weights

    root = tmp_path_factory.mktemp("ip-adapter")
    unet = UNet2DConditionModel.from_pretrained(TINY_MODEL_FOLDER, subfolder="unet")
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
        )
    )
    encoder.save_pretrained(root / "models" / "image_encoder")
    weights = new_adapter_weights(unet, 32, torch.Generator().manual_seed(0))
    save_adapter_weights(root / "models" / "ip-adapter_sd15.safetensors", weights)
    return AdapterSource(
        source=str(root), weight_name="models/ip-adapter_sd15.safetensors", image_encoder="models/image_encoder"
    )


@pytest.fixture
def drawn_book(family_home):
    """An 8-page book about Mia and Rex whose pictures are random 32x32 images (no model needed)."""
    import numpy as np
    from PIL import Image

    from storybook.book import save_book
    from storybook.render.pages import save_png
    from storybook.story.stage import StoryRequest, write_story

    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="bedtime", pages=8, pronouns="she", seed=5)
    folder, book = write_story(family_home, request, "offline")
    rng = np.random.default_rng(0)
    for number, page in enumerate([book.cover, *book.pages]):
        page.image = f"images/picture-{number}.png"
        save_png(folder / page.image, Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))
    save_book(folder, book)
    return folder


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    """A random-weight BLIP captioner in the layout of Salesforce/blip-image-captioning-base (weights, BERT tokenizer
    with its [DEC] start token, preprocessor_config.json), small widths."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    folder = tmp_path_factory.mktemp("blip")
    words = "a the little girl boy toddler with red curly hair in yellow shirt standing waving on white wall".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "[DEC]"]
    vocab_file = folder.parent / f"{folder.name}-vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(vocab_file), bos_token="[DEC]").save_pretrained(folder)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = small | {"vocab_size": len(vocab), "encoder_hidden_size": 32, "max_position_embeddings": 64}
    text |= {"bos_token_id": vocab.index("[DEC]"), "sep_token_id": vocab.index("[SEP]"), "pad_token_id": 0}
    config = BlipConfig(text_config=text, vision_config=small | {"image_size": 64, "patch_size": 16}, projection_dim=32)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
