import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOAD_APP = "from streamlit.testing.v1 import AppTest; AppTest.from_file('streamlit_app.py', default_timeout=60).run()"


def run_with(code: str, user_settings: dict[str, str], tmp_path: Path) -> str:
    """The last word `code` prints, run in a fresh interpreter with the OpenMP settings `user_settings` only."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env |= {"STORYBOOK_HOME": str(tmp_path)} | user_settings
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return result.stdout.split()[-1]


SETTINGS = "\nimport os, torch\nprint(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), sep='/')"


@pytest.mark.parametrize(
    "entry_point",
    [
        "from storybook.cli import app",  # the CLI
        "import storybook.scale_out",  # what a Ray worker unpickles to build its actors
        LOAD_APP,  # the app, its first page run
    ],
)
@pytest.mark.parametrize(("user_settings", "seen"), [({}, "None/1000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE/None")])
def test_every_entry_point_makes_torchs_threads_spin_briefly_unless_the_user_said_otherwise(
    tmp_path, entry_point, user_settings, seen
):
    assert run_with(entry_point + SETTINGS, user_settings, tmp_path) == seen


def test_a_spin_count_the_user_set_is_kept(tmp_path):
    assert run_with("import storybook" + SETTINGS, {"GOMP_SPINCOUNT": "5"}, tmp_path) == "None/5"
