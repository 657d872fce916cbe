import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOAD_APP = "from streamlit.testing.v1 import AppTest; AppTest.from_file('streamlit_app.py', default_timeout=60).run()"


@pytest.mark.parametrize(
    "entry_point",
    [
        "from storybook.cli import app",  # the CLI
        "import storybook.scale_out",  # what a Ray worker unpickles to build its actors
        LOAD_APP,  # the app, its first page run
    ],
)
@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_every_entry_point_makes_torchs_threads_wait_passively_unless_the_user_said_otherwise(
    tmp_path, entry_point, user_value
):
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env |= {"STORYBOOK_HOME": str(tmp_path)} | ({"OMP_WAIT_POLICY": user_value} if user_value else {})
    code = f"{entry_point}\nimport os, torch\nprint(os.environ['OMP_WAIT_POLICY'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split()[-1] == (user_value or "PASSIVE")
