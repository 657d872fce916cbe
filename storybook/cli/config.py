"""`storybook config` (the data root's settings) and `storybook doctor` (what this machine's GPU can do)."""

from typing import Annotated

import typer
from rich.table import Table

from storybook.cli.shell import app, console, run, state
from storybook.config import Dtype
from storybook.errors import ModelError


@app.command("config")
def config_command(
    model: Annotated[
        str | None,
        typer.Option(
            help="The base model of this data root: storybook-mini, tiny, a local folder or a downloaded hub id."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1, mps or cpu.")] = None,
    dtype: Annotated[Dtype | None, typer.Option(help="The weights' dtype when drawing: fp32, fp16 or bf16.")] = None,
    ip_adapter: Annotated[str | None, typer.Option(help="IP-Adapter: a local folder or downloaded hub id.")] = None,
    ip_adapter_weight: Annotated[str | None, typer.Option(help="The IP-Adapter's weights file inside it.")] = None,
    image_encoder: Annotated[str | None, typer.Option(help="The IP-Adapter's image encoder folder inside it.")] = None,
    upscaler: Annotated[str | None, typer.Option(help="The x4 upscaler for print files: folder or hub id.")] = None,
    safety_checker: Annotated[
        str | None,
        typer.Option(
            help="The safety checker every picture passes: a StableDiffusionSafetyChecker folder or hub id (e.g. "
            "CompVis/stable-diffusion-safety-checker for SDXL), or off (default: the base model's own)."
        ),
    ] = None,
    gpu_memory: Annotated[
        float | None,
        typer.Option(help="GiB of GPU memory the memory plans use instead of the card's (a card shared with others)."),
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="Forget a setting, back to its default (repeatable), e.g. --unset device.")
    ] = None,
) -> None:
    """Show or change this data root's settings (config.json): the base model, device, dtype and helper models that
    every command, the app and batch specs use where no flag names one."""

    def configure():
        """Apply the settings given (checked first, written atomically), then show them all."""
        from storybook.config import DataRootConfig, config_path, described_settings
        from storybook.render.configure import update_config

        given = {
            "model": model,
            "device": device,
            "dtype": dtype,
            "ip_adapter": ip_adapter,
            "ip_adapter_weight": ip_adapter_weight,
            "image_encoder": image_encoder,
            "upscaler": upscaler,
            "safety_checker": safety_checker,
            "gpu_memory": gpu_memory,
        }
        changes = {key: value for key, value in given.items() if value is not None}
        for name in unset or []:
            key = name.replace("-", "_")
            if key not in DataRootConfig.model_fields:
                raise ModelError(
                    f"--unset {name}: no such setting; settings: {', '.join(DataRootConfig.model_fields)}."
                )
            if key in changes:
                raise ModelError(f"{name} is both set and unset: give one or the other.")
            changes[key] = None
        if changes:
            update_config(state["home"], changes)
            console.print(f"Saved {config_path(state['home'])}")
        table = Table("setting", "value", "from", title=f"Settings of {state['home']}")
        for name, value, source in described_settings(state["home"]):
            table.add_row(name.replace("_", "-"), value, source)
        console.print(table)

    run(configure, loads_models=bool(model))


@app.command()
def doctor(
    gpu_memory: Annotated[
        float | None,
        typer.Option(min=1.0, help="Plan for a card of this many GiB (default: this machine's card, or the config's)."),
    ] = None,
) -> None:
    """What this machine's GPU can do before anything runs: each method and model family at its defaults fits as it
    is, fits with a memory policy, or is refused; and drawing pages. From parameter counts alone: nothing loads."""

    def examine():
        from storybook.doctor import doctor_report

        line, verdicts = doctor_report(state["home"], gpu_memory)
        console.print(f"GPU: {line}")
        if not verdicts:
            return
        table = Table("model", "what", "fits", "GiB", "how", title="Memory plan (estimates; see docs/gpu.md)")
        for verdict in verdicts:
            fits = {True: "yes", False: "no", None: "-"}[verdict.fits]
            table.add_row(
                verdict.model, verdict.what, fits, f"{verdict.need / 2**30:.1f}" if verdict.need else "", verdict.how
            )
        console.print(table)

    run(examine)
