"""`storybook app`: the app for parents, served by Streamlit."""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from storybook.cli.shell import app, run, state
from storybook.errors import StorybookError
from storybook.storage import HOME_ENV

APP_FILE = Path(__file__).resolve().parents[2] / "streamlit_app.py"


APP_CONFIG = APP_FILE.parent / ".streamlit" / "config.toml"


def app_command_line(port: int) -> list[str]:
    """The `streamlit run` command of the app with every setting of the project's .streamlit/config.toml given as
    a flag, so that the upload limit, usage statistics and toolbar do not depend on the folder it starts from."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    settings = tomllib.loads(APP_CONFIG.read_text(encoding="utf-8"))
    flags = [
        f"--{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
        for section, values in settings.items()
        for key, value in values.items()
    ]
    return [sys.executable, "-m", "streamlit", "run", str(APP_FILE), *flags, f"--server.port={port}"]


def run_server(command: list[str], env: dict[str, str]) -> int:
    """Run the server `command` until it ends; return its exit code (128 + N when signal N stopped it). SIGTERM and
    SIGHUP to this process (`kill`, a closed terminal, a service manager) stop the server too, and it is stopped when
    this process stops for any other reason (Ctrl-C), so that it never outlives the command that started it."""
    import signal
    import subprocess

    server = subprocess.Popen(command, env=env)
    stopped_by: list[int] = []

    def stop_server(signum: int, frame: object) -> None:
        stopped_by.append(signum)
        server.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop_server) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = server.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    if stopped_by:
        return 128 + stopped_by[0]
    return 128 - code if code < 0 else code


@app.command("app")
def start_app(port: Annotated[int, typer.Option(min=1, max=65535, help="The port to serve on.")] = 8501) -> None:
    """Start the app for parents in the browser (its data root: --home, $STORYBOOK_HOME or the current folder)."""

    def serve() -> int:
        if not APP_FILE.is_file():
            raise StorybookError(f"The app is not here ({APP_FILE}): run it from a clone of the project (README).")
        return run_server(app_command_line(port), os.environ | {HOME_ENV: str(state["home"])})

    raise typer.Exit(run(serve))
