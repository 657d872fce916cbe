"""The tests' promise to the work tree: they write only under their temporary folders. A session that changed the
tree (git's view of it: tracked files, and untracked ones git does not ignore) fails, naming the paths."""

import hashlib
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
BEFORE = pytest.StashKey[dict[str, str] | None]()


def tree_changes() -> dict[str, str] | None:
    """Each path of the work tree that differs from git's index (changed, deleted or untracked and not ignored), with
    a hash of what it holds now; None where the tree is not a git work tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--modified", "--deleted", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    changes = {}
    for name in filter(None, listed.decode("utf-8", "surrogateescape").split("\0")):
        path = ROOT / name
        changes[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "deleted"
    return changes


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # pytest-xdist's controller checks the tree; its workers need not
        session.config.stash[BEFORE] = tree_changes()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(BEFORE, None)
    after = tree_changes() if before is not None else None
    if before is None or after is None:
        return
    if changed := sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path)):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"The tests changed the work tree (they may write only under their temporary folders): {changed}"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
