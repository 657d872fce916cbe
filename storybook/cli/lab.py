"""`storybook lab`: the consistency lab (storybook-mini, its adapter, the evaluator and the benchmark)."""

from pathlib import Path
from typing import Annotated

import typer

from storybook.cli.shell import app, console, run
from storybook.storage import MINI_MODEL

COMMITTED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"  # what the package ships (storybook/weights/)
WORK_OUT = Path(".cache/lab")  # where the lab's trainers write unless told to replace the committed weights
ReplaceCommittedOption = Annotated[
    bool,
    typer.Option(
        "--replace-committed",
        help="Write over the package's committed weights (storybook/weights/) instead of the work folder.",
    ),
]

DeviceOption = Annotated[str, typer.Option(help="Train on this device, e.g. cuda (the pictures are drawn on the CPU).")]


def weights_folder(name: str, replace_committed: bool) -> Path:
    """Where a lab trainer writes `name` when no folder is given: the work folder, or the committed weights."""
    return COMMITTED_WEIGHTS / name if replace_committed else WORK_OUT / name


lab_app = typer.Typer(
    help="The consistency lab: storybook-mini, the evaluator and the benchmark.", no_args_is_help=True
)
app.add_typer(lab_app, name="lab")


@lab_app.command("run")
def lab_run(
    work: Annotated[Path, typer.Option(help="Folder for the benchmark's characters, identities and results.")] = Path(
        "lab-run"
    ),
    model: Annotated[str, typer.Option(help="Base model (default: storybook-mini).")] = MINI_MODEL,
    characters: Annotated[int, typer.Option(min=1, help="Held-out characters.")] = 3,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per page prompt.")] = 2,
    method: Annotated[list[str] | None, typer.Option(help="A method to measure (repeatable; default: all).")] = None,
    train_steps: Annotated[int | None, typer.Option(help="Training steps for every method.")] = None,
    train_lr: Annotated[float | None, typer.Option(help="Learning rate for every method.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps per picture.")] = 25,
    pairs: Annotated[int, typer.Option(min=0, help="Also draw N pairs of toddlers on one page (image prompts).")] = 0,
    image_scale: Annotated[float | None, typer.Option(min=0.0, max=4.0, help="Image-prompt strength.")] = None,
) -> None:
    """Benchmark identity consistency: held-out characters x methods x 12 story pages, read by the evaluator."""

    def run_lab():
        import json
        from dataclasses import asdict

        from storybook.lab.benchmark import results_json, results_table, run_benchmark
        from storybook.lab.pairs import pairs_table, run_pairs

        results = run_benchmark(
            work,
            model,
            characters,
            seeds,
            method,
            {"steps": train_steps, "learning_rate": train_lr},
            steps,
            image_scale,
            progress=lambda message: console.print(message),
        )
        table = results_table(results)
        rows = results_json(results)
        if pairs:
            pair_results = run_pairs(
                work, model, pairs, seeds, steps=steps, image_scale=image_scale, progress=console.print
            )
            table += "\n\n" + pairs_table(pair_results)
            rows += [asdict(result) for result in pair_results]
        (work / "results.md").write_text(table + "\n")
        (work / "results.json").write_text(json.dumps(rows, indent=1))
        console.print(table)
        console.print(f"Written to {work / 'results.md'} and results.json")

    run(run_lab, loads_models=True)


@lab_app.command("train-mini")
def lab_train_mini(
    out: Annotated[
        Path, typer.Option(help="Where to save the text-only pipeline (`lab train-adapter` goes on from it).")
    ] = Path(".cache/storybook-mini-text"),
    work: Annotated[Path, typer.Option(help="Checkpoints; run again to resume.")] = Path(".cache/storybook-mini"),
    unet_steps: Annotated[int, typer.Option(min=1, help="Resume a finished run with more to train it longer.")] = 4000,
    schedule_steps: Annotated[
        int | None,
        typer.Option(min=1, help="The learning rate's schedule length, if longer than --unet-steps (a run to go on)."),
    ] = None,
    snapshot: Annotated[
        Path | None,
        typer.Option(
            help="A weights-only snapshot folder: started from when --work holds no checkpoint (a new machine), "
            "rewritten at every checkpoint (commit it to carry a long run to another machine)."
        ),
    ] = None,
    vae_from: Annotated[
        Path | None, typer.Option(help="A storybook-mini folder whose trained VAE to use instead of training one.")
    ] = None,
    seed: int = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Train storybook-mini from scratch on the lab's world (resumable; docs/lab.md gives the times)."""

    def train() -> None:
        from storybook.lab.mini_model import train_mini
        from storybook.models import pick_device

        on = str(pick_device(device))
        train_mini(
            out,
            work,
            unet_steps=unet_steps,
            seed=seed,
            device=on,
            progress=console.print,
            vae_from=vae_from,
            schedule_steps=schedule_steps,
            snapshot=snapshot,
        )

    run(train, loads_models=True)


@lab_app.command("train-adapter")
def lab_train_adapter(
    out: Annotated[
        Path | None,
        typer.Option(
            help=f"Where to save storybook-mini with its retrained UNet (default {WORK_OUT / 'storybook-mini'}; "
            "--replace-committed: the package's own)."
        ),
    ] = None,
    adapter_out: Annotated[
        Path | None,
        typer.Option(
            help="Where to save the IP-Adapter and its image encoder (default "
            f"{WORK_OUT / 'storybook-mini-ip-adapter'}; --replace-committed: the package's own)."
        ),
    ] = None,
    replace_committed: ReplaceCommittedOption = False,
    work: Annotated[Path, typer.Option(help="Checkpoints; run again to resume.")] = Path(
        ".cache/storybook-mini-adapter"
    ),
    base: Annotated[
        Path, typer.Option(help="The text-only storybook-mini to start from (what `lab train-mini` writes).")
    ] = Path(".cache/storybook-mini-text"),
    unet_steps: Annotated[int, typer.Option(min=1, help="Adapter + UNet steps.")] = 2400,
    hat_weight: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Extra loss weight on the hat's pixels (the recipe's hat_weight).")
    ] = 0.0,
    seed: int = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Train storybook-mini's image encoder and IP-Adapter with its UNet (about 1.2 h on 2 CPU cores; resumable)."""

    def train() -> None:
        from storybook.lab.mini_adapter import train_mini_adapter
        from storybook.lab.mini_model import MiniRecipe
        from storybook.models import pick_device

        on = str(pick_device(device))
        train_mini_adapter(
            out or weights_folder("storybook-mini", replace_committed),
            adapter_out or weights_folder("storybook-mini-ip-adapter", replace_committed),
            work,
            base,
            unet_steps=unet_steps,
            seed=seed,
            device=on,
            recipe=MiniRecipe(hat_weight=hat_weight),
            progress=console.print,
        )

    run(train, loads_models=True)


@lab_app.command("train-evaluator")
def lab_train_evaluator(
    out: Annotated[
        Path | None,
        typer.Option(
            help=f"Where to save the evaluator (default {WORK_OUT / 'evaluator'}; --replace-committed: the package's "
            "own, which the lab reads)."
        ),
    ] = None,
    replace_committed: ReplaceCommittedOption = False,
    steps: Annotated[int, typer.Option(min=1)] = 3000,
    seed: int = 0,
) -> None:
    """Train the lab's evaluator (about 15 min on 2 CPU cores) and print its accuracy on fresh renders."""
    from storybook.lab.evaluator import train_evaluator

    folder = out or weights_folder("evaluator", replace_committed)
    run(lambda: console.print(train_evaluator(folder, steps, seed=seed, progress=console.print)), loads_models=True)
