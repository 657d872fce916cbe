import random

from storybook.lab import world
from storybook.lab.evaluator import HEADS, accuracy, labels_of, load_evaluator, sample_scenes, train_evaluator


def test_the_committed_evaluator_reads_fresh_renders_at_least_98_percent_right():
    scenes = sample_scenes(2000, random.Random("a sample the evaluator never saw"))
    scores = accuracy(load_evaluator(), scenes)
    assert all(scores[field] >= 0.98 for field in HEADS), scores


def test_the_evaluator_reads_a_registration_photo_of_a_held_out_toddler():
    photo = world.draw_scene(world.photo_scene(world.DEMO_TODDLER, 0), 256)  # read at any size
    assert load_evaluator().read([photo]) == [labels_of(world.photo_scene(world.DEMO_TODDLER, 0))]


def test_training_the_evaluator_learns_and_saves_a_loadable_model(tmp_path):
    scores = train_evaluator(tmp_path, steps=60, dataset_size=300, progress=lambda message: None)
    assert scores["setting"] > 2 / len(HEADS["setting"])  # well above chance after 60 steps
    evaluator = load_evaluator(tmp_path)
    assert set(evaluator.read([world.draw_scene(sample_scenes(1, random.Random(0))[0])])[0]) == set(HEADS)
