"""Ray settings (a spec's `ray:`, `storybook make --ray`): every value is checked before any work."""

import io
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from storybook.cli import app
from storybook.cluster import RaySettings


@pytest.mark.parametrize(
    "address", ["auto", "local", "head:6379", "10.0.0.5:6379", "ray://head.example:10001", "[::1]:6379"]
)
def test_a_ray_clusters_address_is_accepted(address):
    assert RaySettings(address=address).address == address


@pytest.mark.parametrize(
    "bad",
    [
        {"address": "head"},
        {"address": "head:0"},
        {"address": "head:99999"},
        {"address": "a..b:6379"},
        {"address": "-head:6379"},
        {"address": "[:::]:6379"},
        {"address": "head:6379; rm -rf ~"},
        {"address": "http://head:8265"},
        {"address": ""},
        {"workers": 0},
        {"workers": True},
        {"workers": 20_000},
        {"gpus_per_worker": -1},
        {"gpus_per_worker": 65},
        {"gpus_per_worker": float("nan")},
        {"gpus_per_worker": True},
        {"gpus_per_worker": 1e-300},
        {"gpus_per_worker": 0.123456},
        {"shared": "maybe"},
        {"gpu": 1},
    ],
)
def test_bad_ray_settings_are_refused_by_name(bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        RaySettings(**bad)


def test_the_cli_refuses_a_bad_address_and_ray_options_without_ray_in_one_line(tmp_path):
    refused = CliRunner().invoke(app, ["make", "spec.yaml", "--ray", "--ray-address", "head"])
    assert refused.exit_code == 1 and "is not a Ray cluster's address" in refused.stderr
    refused = CliRunner().invoke(app, ["--home", str(tmp_path), "make", "spec.yaml", "--shared-root"])
    assert refused.exit_code == 1 and "go with --ray" in refused.stderr
    for flags in (["--gpus-per-worker", "65"], ["--gpus-per-worker", "nan"], ["--workers", "20000"]):
        refused = CliRunner().invoke(app, ["--home", str(tmp_path), "make", "spec.yaml", "--ray", *flags])
        assert refused.exit_code == 1 and refused.stderr.startswith("Error: Invalid value")
        assert refused.stdout == "" and len(refused.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "command", [["make", "spec.yaml", "--ray"], ["character", "train", "--all", "--ray"]], ids=["make", "train"]
)
def test_an_unreachable_cluster_is_refused_in_one_line_within_seconds(family_home, command):
    """Ray itself retries an address where nothing listens for minutes, printing its C++ core's warnings."""
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["--home", str(family_home), *command, "--ray-address", "127.0.0.1:1"])
    assert time.perf_counter() - started < 60  # seconds, with the model libraries imported on a loaded machine
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert result.stderr.startswith("Error: Cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused): start")
    assert len(result.stderr.splitlines()) == 1 and not ray_is_running()


def ray_is_running() -> bool:
    import ray

    return ray.is_initialized()


def test_the_progress_of_books_shows_spec_names_as_they_are(monkeypatch):
    from rich.console import Console

    from storybook.cli import make as cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=True, width=100, markup=False))
    with cli.books_progress([Path("mia [draft].yaml"), Path("b.yaml")]) as progress:
        progress(0, 0, 9)
        progress(1, 4, 9)
        progress(0, 5, 9)
    assert "mia [draft].yaml" in screen.getvalue() and "9/18" in screen.getvalue()  # not read as rich markup
