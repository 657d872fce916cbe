"""The training flags of `storybook character train`, made from TrainingConfig's fields: a setting added there is a
flag here, its description the flag's help, and its value checked by TrainingConfig as every other setting is."""

import inspect
import types
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Literal, Union, get_args, get_origin

import typer

from storybook.identities.training_config import TrainingConfig

# Settings that are no flag: the method (--method names it with its image prompt), and experts' settings that keep
# their defaults from the command line.
NOT_FLAGS = {"method", "prior_loss_weight", "class_image_steps", "cache_latents"}
FLAG_NAMES = {"learning_rate": "--lr", "num_vectors": "--vectors", "embedding_learning_rate": "--embedding-lr"}


def flag_type(annotation: object) -> type:
    """The value type of a field's flag: int, float or bool as it is; a choice (a Literal) as text, which
    TrainingConfig checks and names in its error like any other bad value."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    return str if get_origin(annotation) is Literal else annotation


def training_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per flag-worthy TrainingConfig field, default None (the method's default applies)."""
    parameters = []
    for name, field in TrainingConfig.model_fields.items():
        if name in NOT_FLAGS:
            continue
        kind = flag_type(field.annotation)
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        option = typer.Option(f"{flag}/--no-{flag[2:]}" if kind is bool else flag, help=field.description)
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    return parameters


def with_training_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` (which takes `overrides`) with a flag per training setting; `overrides` receives those given, as
    {field: value}."""
    fixed = [parameter for parameter in inspect.signature(command).parameters.values() if parameter.name != "overrides"]
    generated = training_parameters()
    names = [parameter.name for parameter in generated]

    @wraps(command)
    def with_flags(**given) -> None:
        settings = {name: given.pop(name) for name in names}
        return command(**given, overrides={name: value for name, value in settings.items() if value is not None})

    with_flags.__signature__ = inspect.Signature([*fixed, *generated], return_annotation=None)
    with_flags.__annotations__ = {parameter.name: parameter.annotation for parameter in [*fixed, *generated]}
    return with_flags
