"""Fixtures of the identity tests: the training tests' registered toddler."""

from tests.training.conftest import mia  # noqa: F401  (a fixture, found by pytest under this name)
