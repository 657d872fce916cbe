"""Class images: drawn by a base pipeline that decodes one picture of a batch at a time, cached, reused."""

from types import SimpleNamespace

from PIL import Image

from storybook.training.class_images import ensure_class_images


class FakeVae:
    use_slicing = False

    def enable_slicing(self) -> None:
        self.use_slicing = True


class FakePipeline:
    """A base pipeline that draws grey squares and records whether its VAE sliced while it drew."""

    def __init__(self) -> None:
        self.vae, self.sliced = FakeVae(), []

    def __call__(self, prompts, num_inference_steps, generator):
        self.sliced.append(self.vae.use_slicing)
        return SimpleNamespace(images=[Image.new("RGB", (8, 8), "grey")] * len(prompts))


def test_class_images_are_drawn_decoding_one_picture_at_a_time_and_only_once(tmp_path):
    pipelines = []

    def load_base() -> FakePipeline:
        pipelines.append(FakePipeline())
        return pipelines[-1]

    paths = ensure_class_images(load_base, tmp_path, "toddler", 6, 2, show_progress=False)
    assert [path.name for path in paths] == [f"{index:04d}.png" for index in range(6)]
    assert pipelines[0].sliced == [True, True]  # batches of 4 and 2, each decoded picture by picture
    ensure_class_images(load_base, tmp_path, "toddler", 6, 2, show_progress=False)
    assert len(pipelines) == 1  # all there: no pipeline loads
