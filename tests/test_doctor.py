"""`storybook doctor` on a machine without a GPU: the plan for a card of the memory given, by family and method."""

from typer.testing import CliRunner

from storybook.cli import app
from storybook.cli.shell import console
from storybook.doctor import doctor_report
from storybook.render.configure import update_config


def verdict(verdicts, model: str, what: str):
    return next(row for row in verdicts if row.model.startswith(model) and row.what == what)


def test_without_a_gpu_or_a_card_size_the_doctor_says_how_to_ask(tmp_path):
    line, verdicts = doctor_report(tmp_path)
    assert verdicts == [] and "no CUDA GPU here" in line and "--gpu-memory" in line


def test_a_12_gib_card_trains_sdxl_dreambooth_in_bf16_weights_and_refuses_nothing_an_sd15_parent_needs(tmp_path):
    line, verdicts = doctor_report(tmp_path, gpu_memory=12)
    assert "planning for a 12.0 GiB card" in line
    dreambooth = verdict(verdicts, "SDXL", "dreambooth")
    assert dreambooth.fits and "bf16 weights" in dreambooth.how and dreambooth.need <= 12 * 2**30
    assert all(row.fits for row in verdicts if row.model.startswith("SD 1.5"))
    assert verdict(verdicts, "SDXL", "textual-inversion").fits is None  # the method does not train SDXL
    assert not verdict(verdicts, "SDXL", "draw 4 pages").fits


def test_the_cli_prints_an_8_gib_cards_refusals_in_one_line_each(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "width", 400)  # wide enough for each refusal on one line, whatever the terminal
    update_config(tmp_path, {"model": "storybook-mini"})
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "doctor", "--gpu-memory", "8"])
    assert result.exit_code == 0, result.output
    lora = next(line for line in result.output.splitlines() if "SDXL" in line and " lora " in line)
    assert "no method fits SDXL on this 8.0 GiB card, or use a card of 12 GiB" in lora
    assert any("storybook-mini" in line and "dreambooth" in line for line in result.output.splitlines())
