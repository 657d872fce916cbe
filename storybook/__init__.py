"""storybook: personalised picture books from a few photos of a child."""

import os

__version__ = "0.1.0"

# Torch's OpenMP threads (libgomp, in torch's Linux wheels) spin 1,000 times, not libgomp's 300,000, before they sleep
# while they wait for each other. Beside another CPU-bound process on a small machine a long spin holds a core while
# its partner waits for one, and every step slows many times over; sleeping at once (OMP_WAIT_POLICY=PASSIVE) costs
# about 30% alone. Measured by bench/contention.py on 2 cores (docs/testing.md). OpenMP reads this once, when torch
# loads: every entry point (the CLI, the app, a Ray worker unpickling storybook's actors, the tests) imports
# storybook first. A wait policy or spin count the user set is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
