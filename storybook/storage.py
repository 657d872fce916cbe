"""Where storybook keeps its data and finds its templates, safe names for folders, and atomic file writes."""

import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated

from filelock import FileLock, Timeout
from pydantic import AfterValidator

from storybook.errors import InvalidNameError, OutputError

HOME_ENV = "STORYBOOK_HOME"
MODEL_ENV = "STORYBOOK_MODEL"  # the base model used where none is named (the test suite sets 'tiny')
MINI_MODEL = "storybook-mini"  # alias of the committed model trained on the lab's world (storybook/lab/mini_model.py)
MAX_SLUG = 64
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"  # the story and prompt templates (Jinja2)


def data_home(home: Path | None = None) -> Path:
    """Return the data root holding `characters/`, `books/` and `cache/`: `home`, else $STORYBOOK_HOME, else the cwd."""
    if home is not None:
        return Path(home).expanduser().resolve()
    return Path(os.environ.get(HOME_ENV) or Path.cwd()).expanduser().resolve()


def default_model() -> str:
    """The base model used where none is named: $STORYBOOK_MODEL, else storybook-mini (the model that draws
    pictures; 'tiny' is for tests)."""
    return os.environ.get(MODEL_ENV) or MINI_MODEL


def slugify(name: str) -> str:
    """Turn a display name into a folder-safe slug ("Mia Rose" -> "mia-rose"; letters of any script are kept), at
    most MAX_SLUG characters and never ending in "-", so that a slug is its own slug (folders are found by it).

    Raises InvalidNameError for names that are empty, contain path separators or `..`, or leave no letters or digits.
    """
    if not name or not name.strip():
        raise InvalidNameError("The name is empty: give a name such as 'Mia'.")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise InvalidNameError(
            f"The name {name!r} contains a path ('/', '\\' or '..'): use a plain name such as 'Mia'."
        )
    slug = re.sub(r"[\W_]+", "-", unicodedata.normalize("NFKC", name).lower()).strip("-")[:MAX_SLUG].strip("-")
    if not slug:
        raise InvalidNameError(
            f"The name {name!r} has no letters or digits to name a folder by: use a name like 'Mia'."
        )
    return slug


def relative_inside(value: str) -> str:
    """`value` when it is a relative path that stays inside its folder (no absolute path, drive, '..' or '\\');
    raises ValueError otherwise. The type of every file path a data file (book.json, character.json) holds."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value or ":" in value or "\x00" in value:
        raise ValueError(f"{value!r} is not a path inside its folder")
    return value


InsidePath = Annotated[str, AfterValidator(relative_inside)]


def contained(folder: Path, relative: str) -> Path | None:
    """`folder / relative` resolved (symlinks followed), or None when that leads outside `folder`."""
    path = (folder / relative).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one, never a part; `mode`
    sets its permissions (default: private to the user, 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def user_file_target(path: Path) -> Path:
    """Where writing the file a user named (e.g. `export --out`) goes: `path`, or the regular file its symlink names.
    Raises OutputError for a folder, a device or anything else that is not a regular file, and a symlink loop:
    checked before the work that makes the file. Missing folders on the way are created when it is written."""
    try:
        target = path.resolve(strict=False) if path.is_symlink() else path
    except (OSError, RuntimeError):
        raise OutputError(f"{path} is a symlink that leads nowhere (a loop): give the path of a file.") from None
    if target.exists() and not target.is_file():
        kind = "a folder" if target.is_dir() else "not a regular file"
        raise OutputError(f"{path} is {kind}, so nothing was written there: give the path of a file, e.g. book.pdf.")
    return target


def write_user_file(path: Path, data: bytes) -> None:
    """Write `data` to the file a user named, atomically and only as a regular file (see `user_file_target`). A new
    file gets the permissions the user's umask gives, a replaced one keeps its own. Raises OutputError."""
    target = user_file_target(path)
    mode = target.stat().st_mode & 0o7777 if target.is_file() else 0o666 & ~current_umask()
    try:
        atomic_write_bytes(target, data, mode)
    except OSError as error:
        raise OutputError(
            f"Cannot write {path}: {error.strerror or error}. Choose another place, or free some space."
        ) from None


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it is process-wide, a race
    with other threads)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_folder(built: Path, target: Path) -> None:
    """Move the complete folder `built` to `target`, replacing what is there so that some complete version is on
    disk at every moment (the old one is set aside first and deleted last)."""
    previous = target.with_name(f".{target.name}-previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    try:
        built.rename(target)
    except BaseException:
        if previous.exists():
            previous.rename(target)  # the old version back in place: never neither
        raise
    shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def file_lock(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock file at `path` within the block, in any process or thread. When another holds it: call
    `waiting()` and wait for it, or without `waiting` raise filelock.Timeout at once. The file is deleted when it is
    released, so that lock files never stay behind with a name in theirs (one waiting on a deleted file takes a new
    one: filelock checks)."""
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting is None:
            raise
        waiting()
        lock.acquire()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        lock.release()


def remove_stale_builds(target: Path) -> None:
    """Delete the half-built folders of `target` that builds killed before they could clean up left behind (see
    `build_folder`). Only while holding the lock that lets one build of `target` run at a time."""
    for stale in target.parent.glob(f".{target.name}-building-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def build_folder(target: Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty hidden folder beside `target` to build in; when the block ends without an error, move it to
    `target` (replacing what is there, see `replace_folder`; with `replace=False` a non-empty `target` is an OSError
    and is left as it was). On any error, Ctrl-C included, the half-built folder is removed: a reader of `target`
    only ever sees a complete version."""
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-building-"))
    try:
        yield building
        if replace:
            replace_folder(building, target)
        else:
            os.rename(building, target)  # refuses a non-empty target, so two builders never merge
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
