import pytest
from PIL import Image
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    Dinov2Config,
    Dinov2Model,
)

from storybook.lab import metrics, world
from storybook.sample_photos import draw_toddler
from storybook.tiny_model import build_tokenizer

MIA = world.DEMO_TODDLER


def reading(toddler: world.Toddler, setting: str = "beach", **changes) -> dict[str, str]:
    fields = {"setting": setting} | {name: getattr(toddler, name) for name in metrics.IDENTITY_FIELDS}
    return fields | changes


def test_identity_needs_every_attribute_and_the_whole_signature():
    readings = [reading(MIA), reading(MIA, hat_colour="pink"), reading(MIA, outfit="blue"), reading(MIA)]
    assert metrics.identity_consistency(readings, MIA) == 0.5
    assert metrics.pairwise_agreement(readings) == pytest.approx(1 / 6)  # only the two exact pages agree
    assert metrics.pairwise_agreement([reading(MIA, hat_shape="cap")] * 3) == 1.0  # consistent, but not Mia
    assert metrics.part_match(readings, MIA, world.ATTRIBUTES) == 0.75
    assert metrics.part_match(readings, MIA, world.SIGNATURE) == 0.75


def test_prompt_fidelity_compares_each_page_with_its_own_setting():
    readings = [reading(MIA, "beach"), reading(MIA, "snow"), reading(MIA, "park")]
    assert metrics.prompt_fidelity(readings, ["beach", "snow", "forest"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        metrics.prompt_fidelity(readings, ["beach"])


def test_class_drift_counts_pictures_wearing_the_subjects_signature_whatever_their_attributes():
    other = world.Toddler("black", "short", "dark", "blue", MIA.hat_shape, MIA.hat_colour, MIA.pattern)
    readings = [reading(other), reading(MIA, pattern="plain"), reading(MIA, hat_shape="cap"), reading(MIA)]
    assert metrics.class_drift(readings, MIA) == 0.5
    assert metrics.class_drift([], MIA) == 0.0


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Tiny random-weight CLIP and DINOv2 encoders saved as the user would give them: local transformers folders."""
    root = tmp_path_factory.mktemp("encoders")
    tokenizer = build_tokenizer()
    clip = CLIPModel(
        CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": 77,
                "eos_token_id": tokenizer.eos_token_id,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=16,
        )
    )
    clip.save_pretrained(root / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(root / "dino")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    return root


def test_embedding_metrics_run_on_the_encoders_the_user_gives(encoders):
    photos = [draw_toddler(seed) for seed in range(3)]
    other = [Image.new("RGB", (64, 64), (0, 90, 200))]
    scores = metrics.embedding_metrics(
        photos,
        photos,
        ["a toddler at the beach"] * 3,
        dino=encoders / "dino",
        clip=encoders / "clip",
        face=encoders / "dino",
    )
    assert set(scores) == {"dino", "clip_i", "clip_t", "face", "faces_found"}
    assert all(-1.0 <= scores[name] <= 1.0 for name in ("dino", "clip_i", "clip_t", "face"))
    for name in ("dino", "clip"):
        encoder = metrics.ImageEncoder(encoders / name)
        assert metrics.mean_similarity(encoder, other, other) == pytest.approx(1.0, abs=1e-5)
        assert metrics.mean_similarity(encoder, photos, other) < 1.0 - 1e-4


def test_face_similarity_reports_pictures_without_a_face(encoders):
    encoder = metrics.ImageEncoder(encoders / "dino")
    blank = [Image.new("RGB", (256, 256), (200, 200, 200))] * 2
    assert metrics.face_similarity(encoder, blank, blank) == (None, 0.0)
    assert metrics.embedding_metrics(blank, blank, ["a"] * 2) == {}
