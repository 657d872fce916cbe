from storybook.lab import world
from storybook.lab.benchmark import benchmark_toddlers
from storybook.lab.evaluator import labels_of
from storybook.lab.sweep import FIELDS, FieldTally


def test_the_tally_counts_each_field_per_page_and_identity_and_agreement_per_book():
    first, second = benchmark_toddlers(2)
    truths = [labels_of(scene) for scene in world.page_scenes(first, 1)]
    tally = FieldTally()
    tally.add(truths, first)  # every page right
    other = [
        dict(truth, hat_shape=second.hat_shape if second.hat_shape != first.hat_shape else "?") for truth in truths
    ]
    other[:6] = [dict(truth, setting="snow" if truth["setting"] != "snow" else "beach") for truth in other[:6]]
    tally.add(other, first)  # the hat wrong on every page, the setting on half of them
    assert tally.pages == 24 and tally.identity == [1.0, 0.0] and tally.agreement == [1.0, 1.0]
    assert tally.right["hat_shape"] == 12 and tally.right["setting"] == 18
    assert all(tally.right[name] == 24 for name in FIELDS if name not in ("hat_shape", "setting"))
    assert tally.summary().startswith("identity 50%, agreement 100%; setting 75% hair_colour 100%")
