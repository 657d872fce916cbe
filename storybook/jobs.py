"""Long jobs for the app (training a character, rendering a book, exporting it): run off the UI thread, state kept on
disk.

A job is a function run in a background thread of the server process. Its state (running, done, failed, cancelled;
progress; last message) lives in <home>/jobs/<kind>-<target>.json, written atomically at each step, so a browser
refresh or a second tab sees the same job. Cancelling writes a flag file; the job's progress callback sees it at the
next step and stops the way Ctrl-C does (training checkpoints, rendering keeps every finished picture). A state left
"running" by a server that has since stopped is reported as interrupted.

Jobs that use the GPU take turns: one lock for every kind, so two trainings, or a training and a render, never share
the card; a job waiting for it says so in its message (and can be cancelled while it waits).
"""

import os
import threading
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from storybook.errors import StorybookError
from storybook.storage import atomic_write_text, slugify

STARTING = threading.Lock()
GPU = threading.Lock()  # held by the one job on the GPU; every GPU job of every kind waits for it
GPU_HOLDER: dict[str, str] = {}  # {"job": "train mia"} while a job holds the GPU
PROCESS = uuid.uuid4().hex  # this server process, as job files name it
Status = Literal["running", "done", "failed", "cancelled", "interrupted"]


class JobCancelled(KeyboardInterrupt):
    """The app asked the job to stop; raised from its progress callback and handled like Ctrl-C."""


class JobState(BaseModel):
    """<home>/jobs/<kind>-<target>.json: what a job is doing or how it ended."""

    kind: str  # 'train', 'render' or 'export'
    target: str  # the character's or the book's folder name
    status: Status
    done: int = 0
    total: int = 0
    message: str = ""
    pid: int  # the server process running it
    process: str = ""  # that process's PROCESS token: a restarted server may get the same pid
    started_at: datetime
    finished_at: datetime | None = None


Progress = Callable[[int, int, str], None]  # (done, total, message); raises JobCancelled when cancelled


def job_file(home: Path, kind: str, target: str) -> Path:
    """Where the state of job `kind` on `target` is kept."""
    return home / "jobs" / f"{slugify(kind)}-{slugify(target)}.json"


def read_job(home: Path, kind: str, target: str) -> JobState | None:
    """The state of the last job `kind` on `target`, or None; a job whose server is gone reads as 'interrupted'."""
    path = job_file(home, kind, target)
    if not path.is_file():
        return None
    try:
        state = JobState.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError):
        return None  # a damaged job file: as if there were none (the next job writes a new one)
    alive = state.process == PROCESS if state.pid == os.getpid() else process_alive(state.pid)
    if state.status == "running" and not alive:
        state.status, state.message = "interrupted", "The app stopped during this job; start it again to go on."
    return state


def is_running(home: Path, kind: str, target: str) -> bool:
    """Whether job `kind` on `target` is running now."""
    state = read_job(home, kind, target)
    return state is not None and state.status == "running"


def process_alive(pid: int) -> bool:
    """Whether a process with `pid` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def cancel_job(home: Path, kind: str, target: str) -> None:
    """Ask the running job `kind` on `target` to stop at its next step."""
    job_file(home, kind, target).with_suffix(".cancel").touch()


def start_job(
    home: Path, kind: str, target: str, work: Callable[[Progress], str], uses_gpu: bool = True
) -> threading.Thread:
    """Run `work(progress)` in a background thread as job `kind` on `target`; its return value is the final message.
    With `uses_gpu` it first waits for the GPU (every such job, whatever its kind, takes its turn), saying what it
    waits for.

    Raises StorybookError when that job is already running.
    """
    path = job_file(home, kind, target)
    cancel_flag = path.with_suffix(".cancel")
    with STARTING:  # two tabs clicking at once start one job
        if is_running(home, kind, target):
            raise StorybookError(f"{target} is already being worked on ({kind}): wait for it, or cancel it.")
        cancel_flag.unlink(missing_ok=True)
        now = datetime.now(timezone.utc)
        state = JobState(kind=kind, target=target, status="running", pid=os.getpid(), process=PROCESS, started_at=now)
        save_state(path, state)

    def progress(done: int, total: int, message: str) -> None:
        state.done, state.total, state.message = done, total, message
        save_state(path, state)
        if cancel_flag.exists():
            raise JobCancelled

    def run() -> None:
        holding = False
        try:
            if uses_gpu:
                while not (holding := GPU.acquire(timeout=1.0)):
                    progress(0, 0, f"waiting for the GPU: {GPU_HOLDER.get('job', 'another job')} is using it")
                GPU_HOLDER["job"] = f"{kind} {target}"
            state.message, state.status = work(progress), "done"
        except (JobCancelled, StorybookError) as error:
            cancelled = isinstance(error, JobCancelled) or cancel_flag.exists()
            state.status = "cancelled" if cancelled else "failed"
            state.message = str(error) or "Cancelled."
        except Exception as error:  # a job must never die silently: the app shows the message
            state.status, state.message = "failed", f"{type(error).__name__}: {error}"
            traceback.print_exc()
        finally:
            if holding:
                GPU_HOLDER.pop("job", None)
                GPU.release()
        state.finished_at = datetime.now(timezone.utc)
        cancel_flag.unlink(missing_ok=True)
        save_state(path, state)

    thread = threading.Thread(target=run, name=f"storybook-{kind}-{target}", daemon=True)
    thread.start()
    return thread


def save_state(path: Path, state: JobState) -> None:
    """Write `state` atomically."""
    atomic_write_text(path, state.model_dump_json(indent=2))
