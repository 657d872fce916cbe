"""Trained identities on disk: identity.json (what was trained, from what, how, and how well) beside the method's
weights. How each method writes and loads its weights is in its part (storybook/identities/)."""

import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from storybook.errors import ModelError, describe_problems
from storybook.identities.training_config import Method, TrainingConfig
from storybook.storage import InsidePath

SCHEMA_VERSION = 1
RECORD = "identity.json"


class IdentityMetadata(BaseModel):
    """identity.json: what was trained, from what, how, and how well."""

    schema_version: int = SCHEMA_VERSION
    character: str
    token: str
    class_noun: str
    method: Method
    base_model: str
    base_model_fingerprint: str
    cross_attention_dim: int
    resolution: int
    config: TrainingConfig
    steps_done: int
    final_loss: float
    loss_history: list[float]
    photo_loss_before: float  # fixed-noise denoising loss of the photos under their caption, before training
    photo_loss_after: float  # the same after training: lower means the identity was learned
    wall_time_s: float
    photo_sha256: list[str]
    captions: list[str] = []  # the caption each photo trained under (older identities did not record them)
    files: list[InsidePath]  # inside the identity's folder
    created_at: datetime


def read_identity(folder: Path) -> IdentityMetadata:
    """Read identity.json from `folder`. Raises ModelError when the character has no trained identity, or its record
    is damaged."""
    record = folder / RECORD
    if not record.is_file():
        raise ModelError(f"No trained identity in {folder}: run `storybook character train NAME` first.")
    try:
        return IdentityMetadata.model_validate(json.loads(record.read_text(encoding="utf-8")))
    except ValueError as error:  # not JSON (or not UTF-8), or not an identity record
        problem = describe_problems(error) if isinstance(error, ValidationError) else "not a JSON record"
        raise ModelError(
            f"{record} is damaged ({problem}): build the identity again with `storybook character train NAME`."
        ) from None
