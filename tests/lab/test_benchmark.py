import json

import pytest
from typer.testing import CliRunner

from storybook.cli import app
from storybook.errors import LabError
from storybook.lab import world
from storybook.lab.benchmark import CEILING, METHODS, benchmark_toddlers, run_benchmark

runner = CliRunner()


def test_benchmark_characters_are_distinct_held_out_toddlers():
    toddlers = benchmark_toddlers(5)
    assert toddlers == benchmark_toddlers(5)
    assert all(world.is_held_out(toddler) for toddler in toddlers)
    assert len({toddler.signature for toddler in toddlers}) == 5


def test_a_reduced_benchmark_run_writes_the_table(tmp_path):
    work = tmp_path / "lab"
    args = ["--home", str(tmp_path), "lab", "run", "--work", str(work), "--characters", "1", "--seeds", "1"]
    args += ["--method", "description only", "--method", "LoRA + prior", "--method", "IP-Adapter"]
    args += ["--method", CEILING, "--train-steps", "30", "--steps", "12", "--pairs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((work / "results.json").read_text())
    methods = [row["method"] for row in rows[:4]]
    assert methods == ["description only", "LoRA + prior", "IP-Adapter", CEILING]
    for row in rows[:4]:
        assert all(
            0.0 <= row[name] <= 1.0
            for name in ("identity", "attributes", "signature", "agreement", "fidelity", "drift")
        )
    description, lora, image_prompt, ceiling = rows[:4]
    assert description["train_s"] == 0 and lora["train_s"] > 0
    assert 0 < lora["artifact_mb"] < 2  # a LoRA file: a small part of storybook-mini's 22 MB UNet
    assert image_prompt["artifact_mb"] < 0.01 and image_prompt["train_s"] < lora["train_s"]  # an embedding, no training
    assert 0 < image_prompt["ready_s"] < lora["ready_s"]  # from the photos to the first page
    # Each identity is built in its own process, whose peak holds torch and the model: hundreds of MiB, not GBs.
    assert description["peak_mb"] == 0 and 200 < image_prompt["peak_mb"] < 4000 and 200 < lora["peak_mb"] < 4000
    assert ceiling["attributes"] >= 0.75  # the true pictures through the VAE read right
    assert [row["variant"] for row in rows[4:]] == ["masks", "no masks"]  # two toddlers on a page
    table = (work / "results.md").read_text()
    assert "| LoRA + prior |" in table and "identity consistency" in table and "| masks |" in table
    assert "| peak RSS MiB |" in table
    assert (work / "home" / "characters" / "kid0-lora-prior" / "identity" / "identity.json").is_file()
    assert (work / "home" / "characters" / "kid0-ip-adapter" / "identity" / "image_prompt.json").is_file()
    sheets = sorted(path.name for path in (work / "sheets").iterdir())
    assert sheets == ["character-0-description.png", "character-0-ip-adapter.png", "character-0-lora-prior.png"]


def test_an_unknown_method_or_a_used_work_folder_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(LabError, match="LoRA \\+ prior"):
        run_benchmark(tmp_path, methods=["magic"])
    assert set(METHODS) >= {"description only", "DreamBooth, no prior"}
    (tmp_path / "home" / "characters" / "kid0-lora-prior").mkdir(parents=True)
    result = runner.invoke(app, ["--home", str(tmp_path), "lab", "run", "--work", str(tmp_path)])
    assert result.exit_code == 1 and "give another --work folder" in result.output
