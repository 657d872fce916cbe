"""storybook: personalised picture books from a few photos of a child."""

import os

__version__ = "0.1.0"

# Torch's OpenMP threads sleep while they wait for each other instead of spinning. Beside another CPU-bound process
# on a small machine a spinning thread holds its core while its partner waits for one, and every step slows many
# times over (bench/contention.py). OpenMP reads this once, when torch loads: every entry point (the CLI, the app,
# a Ray worker unpickling storybook's actors, the tests) imports storybook first. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
