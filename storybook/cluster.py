"""Where a run draws its pages on Ray: the settings a spec's `ray:` or `storybook make --ray` give, checked before
any work (a light module: no model library is imported)."""

import ipaddress
import os
import re
import socket

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storybook.errors import BookError

# HOST:PORT or ray://HOST:PORT, HOST a DNS name (labels of letters, digits and inner hyphens) or a bracketed IPv6
RAY_ADDRESS = re.compile(r"(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):(?P<port>[0-9]{1,5})")
HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
GPU_STEP = 10_000  # Ray schedules GPUs in steps of 1/10,000
CONNECT_SECONDS = 5.0  # to reach a cluster's port; Ray itself retries an unreachable one for minutes


def check_ray_address(address: str | None) -> str | None:
    """`address` when it is a Ray cluster's address (auto, local, HOST:PORT or ray://HOST:PORT, the port 1-65535)
    or None; raises ValueError saying what one looks like."""
    if address is None or address in ("auto", "local"):
        return address
    match = RAY_ADDRESS.fullmatch(address)
    host = match["host"] if match else ""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            host = ""
    elif not all(HOST_LABEL.fullmatch(label) for label in host.split(".")):
        host = ""
    if not host or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"{address!r} is not a Ray cluster's address: give HOST:PORT as `ray start --head` prints it")
    return address


def check_reachable(address: str | None) -> None:
    """Raises BookError, within CONNECT_SECONDS, when the Ray cluster at `address` (else $RAY_ADDRESS) cannot be
    reached: nothing listens on its port, or its host does not answer or does not exist. 'auto', 'local' and no address
    at all are left to Ray (it finds the cluster this machine started, or starts one)."""
    given = address or os.environ.get("RAY_ADDRESS")
    if given is None or given in ("auto", "local"):
        return
    try:
        match = RAY_ADDRESS.fullmatch(check_ray_address(given) or "")
    except ValueError as error:
        raise BookError(f"$RAY_ADDRESS: {error}.") from None
    try:
        with socket.create_connection((match["host"].strip("[]"), int(match["port"])), timeout=CONNECT_SECONDS):
            return
    except OSError as error:  # refused, timed out, no route, unknown host
        why = error.strerror or str(error) or type(error).__name__
    raise BookError(
        f"Cannot reach the Ray cluster at {given} ({why}): start it with `ray start --head` there and give the "
        "address it prints (--ray-address or $RAY_ADDRESS), or leave both out to use a Ray instance of this machine."
    )


class RaySettings(BaseModel):
    """How a run draws its pages on Ray (`storybook make --ray`, or a spec's `ray:`): the cluster (None: $RAY_ADDRESS,
    else a local instance), the drawing actors and their GPUs (None: Ray's defaults, see make_books_on_ray), and
    whether the data root is shared, so that workers write the pictures into the books themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None
    workers: int | None = Field(default=None, ge=1, le=10_000, strict=True)
    gpus_per_worker: float | None = Field(default=None, ge=0, le=64, allow_inf_nan=False)
    shared: bool = Field(default=False, strict=True)

    @field_validator("address")
    @classmethod
    def ray_address(cls, address: str | None) -> str | None:
        """`address` when it is a Ray cluster's address."""
        return check_ray_address(address)

    @field_validator("gpus_per_worker", mode="before")
    @classmethod
    def gpu_share(cls, gpus: object) -> object:
        """`gpus` when it is a number of GPUs Ray can schedule (not true/false, a multiple of 1/10,000)."""
        if isinstance(gpus, bool):
            raise ValueError("give a number of GPUs, e.g. 1 or 0.5")
        if isinstance(gpus, int | float) and (abs(gpus - round(gpus * GPU_STEP) / GPU_STEP) > 1e-9 or 0 < gpus < 1e-4):
            raise ValueError(f"Ray schedules GPUs in steps of {1 / GPU_STEP:g}")
        return gpus

    def summary(self) -> str:
        """The settings as a spec would say them ("Ray's defaults" when none is set)."""
        return str(self.model_dump(exclude_defaults=True) or "Ray's defaults")
