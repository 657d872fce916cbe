"""Where storybook keeps its data and finds its templates, safe names for folders, and atomic file writes."""

import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

from storybook.errors import InvalidNameError

HOME_ENV = "STORYBOOK_HOME"
MODEL_ENV = "STORYBOOK_MODEL"  # the base model used where none is named (the test suite sets 'tiny')
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"  # the story and prompt templates (Jinja2)


def data_home(home: Path | None = None) -> Path:
    """Return the data root holding `characters/`, `books/` and `cache/`: `home`, else $STORYBOOK_HOME, else the cwd."""
    if home is not None:
        return Path(home).expanduser().resolve()
    return Path(os.environ.get(HOME_ENV) or Path.cwd()).expanduser().resolve()


def default_model() -> str:
    """The base model used where none is named: $STORYBOOK_MODEL, else storybook-mini (the model that draws
    pictures; 'tiny' is for tests)."""
    return os.environ.get(MODEL_ENV) or "storybook-mini"


def slugify(name: str) -> str:
    """Turn a display name into a folder-safe slug ("Mia Rose" -> "mia-rose"; letters of any script are kept).

    Raises InvalidNameError for names that are empty, contain path separators or `..`, or leave no letters or digits.
    """
    if not name or not name.strip():
        raise InvalidNameError("The name is empty: give a name such as 'Mia'.")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise InvalidNameError(
            f"The name {name!r} contains a path ('/', '\\' or '..'): use a plain name such as 'Mia'."
        )
    slug = re.sub(r"[\W_]+", "-", unicodedata.normalize("NFKC", name).lower()).strip("-")[:64]
    if not slug:
        raise InvalidNameError(
            f"The name {name!r} has no letters or digits to name a folder by: use a name like 'Mia'."
        )
    return slug


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
    built.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
