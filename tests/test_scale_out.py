"""`storybook make --ray`: books drawn by Ray actors on a local cluster are the books a local make draws; a broken
spec fails alone; a worker killed mid-run costs only its pictures, which are drawn again; a second run draws nothing."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
from PIL import Image
from pypdf import PdfReader
from typer.testing import CliRunner

from storybook import registry
from storybook.batch import MadeBook, make_books, prepare_spec_book
from storybook.book import load_book
from storybook.cli import app
from storybook.cluster import RaySettings
from storybook.dispatch import make_specs
from storybook.errors import BookError
from storybook.render.configure import update_config
from storybook.render.pages import plan_pictures
from storybook.render.renderer import picture_source
from storybook.scale_out import (
    BookRun,
    PageDrawer,
    book_rows,
    build_identities_on_ray,
    draw_rows,
    make_books_on_ray,
)
from storybook.tiny_model import build_tokenizer
from tests.test_batch import write_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance on this machine alone (the driver's loopback), started by the test and shut down after it."""
    ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def three_specs(folder):
    return [
        write_spec(folder, "beach", characters=["Mia", "Rex"], pages=8),
        write_spec(folder, "bath", characters=["Mia"], theme="bath time", pages=8),
        write_spec(folder, "bedtime", characters=["Rex"], theme="bedtime", pages=8),
    ]


def pictures(home, name) -> list[np.ndarray]:
    folder = home / "books" / name
    book = load_book(folder)
    return [np.asarray(Image.open(folder / page.image).convert("RGB")) for page in [book.cover, *book.pages]]


def other_home(tmp_path, studio):
    """A second data root with the same models and trained characters."""
    home = tmp_path / "local-home"
    home.mkdir()
    for name in ("models", "characters"):
        (home / name).symlink_to((studio / name).resolve(), target_is_directory=True)
    return home


def test_ray_draws_the_books_a_local_make_draws_a_broken_spec_fails_alone_and_a_second_run_draws_nothing(
    studio, tmp_path, local_ray
):
    specs = three_specs(tmp_path)
    broken = write_spec(tmp_path, "broken", characters=["Nobody"])
    reports = []
    made = make_books_on_ray(
        studio, [*specs, broken], RaySettings(workers=2), say=lambda line: None, progress=lambda *r: reports.append(r)
    )
    assert [m.error is None for m in made] == [True, True, True, False] and "Nobody" in made[3].error
    assert [m.drawn for m in made[:3]] == [9, 9, 9] and all(m.output.is_file() for m in made[:3])
    for book in range(3):  # progress per book: planned, then each picture as it comes back
        assert [(done, total) for index, done, total in reports if index == book] == [(n, 9) for n in range(10)]
    assert not [r for r in reports if r[0] == 3]

    local = other_home(tmp_path, studio)
    for result in make_books(local, specs, say=lambda line: None):
        assert result.error is None
    for name in ("beach", "bath", "bedtime"):
        for on_ray, here in zip(pictures(studio, name), pictures(local, name), strict=True):
            # The same pictures up to float rounding: Ray's actors batch other pages together and compute with one
            # thread each, which can move a rare value by one level (as batching does locally).
            difference = np.abs(on_ray.astype(int) - here.astype(int))
            assert difference.max() <= 1 and (difference > 0).mean() < 0.01

    again = make_books_on_ray(studio, specs, RaySettings(workers=2), say=lambda line: None)
    assert [(m.error, m.drawn) for m in again] == [(None, 0)] * 3
    assert [m.drawn for m in make_books(studio, specs, say=lambda line: None)] == [0, 0, 0]  # one cache, both ways


def command_line(process: psutil.Process) -> str:
    """`process`'s command line, or "" for one that has ended meanwhile (gone, or a zombie not yet reaped)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return ""


def page_drawers() -> list[psutil.Process]:
    """The drawing actors of this test session's own Ray instance (its processes are children of this one)."""
    return [process for process in psutil.Process().children(recursive=True) if "PageDrawer" in command_line(process)]


def test_a_worker_killed_mid_run_costs_only_its_pictures_which_are_drawn_again(studio, tmp_path, local_ray):
    # 12 denoising steps a picture (the other tests take 2): a run long enough to be caught in its middle on a busy
    # machine, where Ray hands pictures back in bursts.
    specs = [
        write_spec(tmp_path, f"book-{index}", characters=["Mia"], pages=8, seed=index, render={"steps": 12})
        for index in range(3)
    ]
    earlier = {process.pid for process in page_drawers()}  # an earlier test's actors, maybe still shutting down
    results = {}
    run = threading.Thread(
        target=lambda: results.update(
            made=make_books_on_ray(studio, specs, RaySettings(workers=2), say=lambda line: None)
        )
    )
    run.start()
    killed, killed_at, drawn_at_kill, drawn = None, None, 0, 0
    deadline = time.monotonic() + 900  # a safety net only: on a loaded machine Ray's start alone takes minutes
    while killed is None and run.is_alive() and time.monotonic() < deadline:
        drawn = len(list((studio / "books").glob("*/images/*.png")))
        workers = [process for process in page_drawers() if process.pid not in earlier]
        if workers and 0 < drawn <= 27 - 8:  # drawing, with at least two batches of 4 still to come
            killed, killed_at, drawn_at_kill = workers[0].pid, time.time(), drawn
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    run.join(timeout=900)
    assert killed is not None, f"no drawing worker was seen while pictures were being drawn ({drawn} drawn)"
    made = results["made"]
    assert all(m.error is None and m.output.is_file() for m in made)
    for spec in specs:  # every page has its picture, and no picture was stored twice
        folder = studio / "books" / spec.stem
        book = load_book(folder)
        assert all(page.image for page in [book.cover, *book.pages])
        assert len(list((folder / "images").glob("*.png"))) == 9
    drawn_after = [path for path in (studio / "books").glob("*/images/*.png") if path.stat().st_mtime > killed_at]
    assert len(drawn_after) >= 27 - drawn_at_kill - 4  # the run went on after the kill (a batch may land meanwhile)
    assert make_books_on_ray(studio, specs, RaySettings(workers=2), say=lambda line: None)[0].drawn == 0


def test_the_cli_makes_books_on_ray_and_ray_options_need_ray(studio, tmp_path, local_ray):
    spec = write_spec(tmp_path, "cli", characters=["Mia"])
    refused = CliRunner().invoke(app, ["--home", str(studio), "make", str(spec), "--workers", "2"])
    assert refused.exit_code == 1 and "go with --ray" in refused.stderr
    result = CliRunner().invoke(app, ["--home", str(studio), "make", str(spec), "--ray", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "9 pictures to draw on Ray" in result.output and (tmp_path / "out" / "cli.pdf").is_file()


def test_every_character_is_built_as_a_ray_task_and_one_that_fails_fails_alone(home, sample_photos, local_ray):
    for name, class_noun in (("Mia", "toddler"), ("Rex", "dog")):
        registry.add_character(home, name, sample_photos, build_tokenizer(), class_noun=class_noun)
    quick = {"steps": 4, "num_class_images": 2, "class_image_steps": 2}
    built = build_identities_on_ray(home, ["Mia", "Rex", "Nobody"], "lora", "tiny", quick)
    assert [(b.name, b.error is None) for b in built] == [("Mia", True), ("Rex", True), ("Nobody", False)]
    assert "Nobody" in built[2].error
    assert registry.is_trained(home, "mia") and registry.is_trained(home, "rex")

    result = CliRunner().invoke(app, ["--home", str(home), "character", "train", "Mia", "--ray"])
    assert result.exit_code == 1 and "go with --all" in result.stderr


def test_pictures_the_safety_checker_withholds_on_ray_fail_their_book_alone(studio, tmp_path, local_ray):
    from tests.render.test_safety import write_checker

    update_config(studio, {"safety_checker": str(write_checker(tmp_path / "checker", flags_everything=True))})
    spec = write_spec(tmp_path, "screened", characters=["Mia"])
    lines = []
    [made] = make_books_on_ray(studio, [spec], RaySettings(workers=1), say=lines.append)
    assert made.error.startswith("The safety checker withheld the pictures of cover, page 1,")
    assert not (tmp_path / "out" / "screened.pdf").exists()
    assert any("the safety checker flagged the pictures of seeds" in line for line in lines)  # each one reported
    assert not list((studio / "books" / "screened" / "images").glob("*.png"))  # none stored


def test_an_error_while_drawing_comes_back_in_its_books_rows_and_the_other_book_is_drawn(studio, tmp_path, local_ray):
    rows = []
    for index, name in enumerate(("good", "stale")):
        spec = write_spec(tmp_path, name, characters=["Mia"])
        run = BookRun(MadeBook(spec))
        run.spec, run.folder, book = prepare_spec_book(studio, spec, lambda line: None)
        source = picture_source(studio, "tiny", None)
        run.plan = plan_pictures(studio, book, source, lambda prompt: 0)
        rows += book_rows(index, run, studio, source, None)[:2]  # two pictures of each book in one batch
    for row in rows[2:]:  # the second book's rows were planned with an identity that has been built again since
        row["identities"] = row["identities"].replace(json.loads(row["identities"])["mia"], "0" * 16)
    batch = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    out = PageDrawer()(batch)
    assert out["book"] == [0, 0, 1, 1] and out["error"][:2] == ["", ""]
    assert all(Image.open(io.BytesIO(png)).size == (32, 32) for png in out["png"][:2])
    assert all("The identity of mia changed while the book was drawn" in error for error in out["error"][2:])
    assert out["png"][2:] == [b"", b""]


def test_specs_that_say_ray_are_drawn_on_ray_the_others_here_and_specs_asking_for_two_clusters_are_refused(
    studio, tmp_path, local_ray
):
    on_ray = write_spec(tmp_path, "on-ray", characters=["Mia"], ray={"workers": 1, "shared": True})
    here = write_spec(tmp_path, "here", characters=["Rex"], theme="bedtime")
    lines, reports = [], []
    made = make_specs(studio, [on_ray, here], say=lines.append, progress=lambda *r: reports.append(r))
    assert [(m.spec, m.error, m.drawn) for m in made] == [(on_ray, None, 9), (here, None, 9)]
    assert "9 pictures to draw on Ray (1 workers, 0 GPU each)" in lines  # the spec's book alone, with its settings
    assert "on-ray.yaml: 9 pictures drawn on Ray (written by the workers into the shared data root), 0 reused" in lines
    assert [(done, total) for book, done, total in reports if book == 0] == [(n, 9) for n in range(10)]
    assert [total for book, done, total in reports if book == 1] == [9] * 3 and reports[-1] == (1, 9, 9)  # 4, 8, 9

    other = write_spec(tmp_path, "other-cluster", characters=["Mia"], ray={"address": "head:6379"})
    with pytest.raises(BookError, match="2 different Ray settings.*on-ray.yaml.*other-cluster.yaml: .*'head:6379'"):
        make_specs(studio, [on_ray, other], say=lines.append)
    again = make_specs(studio, [on_ray, other, here], RaySettings(workers=1), say=lines.append)  # --ray: all of them
    assert [m.drawn for m in again] == [0, 9, 0] and lines[-1].startswith("other-cluster.yaml: 12 pages written")


def test_with_a_shared_data_root_the_actors_write_the_pictures_into_the_books_themselves(studio, tmp_path, local_ray):
    spec = write_spec(tmp_path, "shared", characters=["Mia"])
    run = BookRun(MadeBook(spec))
    run.spec, run.folder, book = prepare_spec_book(studio, spec, lambda line: None)
    (run.folder / "images").mkdir()  # as the driver makes it before sending the rows
    source = picture_source(studio, "tiny", None)
    run.plan = plan_pictures(studio, book, source, lambda prompt: 0)
    rows = book_rows(0, run, studio, source, None, shared=True)[:2]
    batch = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    out = PageDrawer()(batch)  # the actor writes the pictures and sends back only their names
    assert out["png"] == [b"", b""] and out["error"] == ["", ""]
    assert all(Image.open(run.folder / image).size == (32, 32) for image in out["image"])

    (tmp_path / "a-file").write_text("")
    batch["folder"] = np.array([str(tmp_path / "a-file")] * 2, dtype=object)  # a folder the worker cannot write
    assert all("is the data root shared" in error for error in PageDrawer()(batch)["error"])


def test_a_picture_the_driver_cannot_see_fails_its_book_and_workers_never_make_their_own_book_folders(
    studio, tmp_path, local_ray
):
    spec = write_spec(tmp_path, "unshared", characters=["Mia"])
    run = BookRun(MadeBook(spec))
    run.spec, run.folder, book = prepare_spec_book(studio, spec, lambda line: None)
    (run.folder / "images").mkdir()
    source = picture_source(studio, "tiny", None)
    run.plan = plan_pictures(studio, book, source, lambda prompt: 0)
    rows = book_rows(0, run, studio, source, None, shared=True)
    worker_copy = tmp_path / "worker-copy"  # the book's path on a worker whose data root is its own
    for row in rows:
        row["folder"] = str(worker_copy)
    run.waiting = run.made.drawn = len(rows)
    draw_rows(ray, rows, [run], studio, 1, 0, "cpu", lambda line: None, None)
    assert "a worker does not see" in run.made.error and "is the data root shared" in run.made.error
    assert not worker_copy.exists()  # no book folder of its own made on the worker

    (worker_copy / "images").mkdir(parents=True)  # the worker's copy has the book: it writes there, unseen
    run.made.error, run.waiting = None, len(rows)
    draw_rows(ray, rows, [run], studio, 1, 0, "cpu", lambda line: None, None)
    assert "this machine does not see it (or cannot read it): the data root is not shared" in run.made.error
    assert not run.made.output and not list((run.folder / "images").glob("*.png"))


def test_a_driver_joins_a_two_node_cluster_by_address_and_its_workers_write_into_the_shared_root(studio, tmp_path):
    """Two Ray nodes (one CPU each, so the two actors land on both), the CLI as a separate driver joining them by
    address, the data root shared (one machine's disk): the workers write the pictures, the driver exports."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        spec = write_spec(tmp_path, "cluster", characters=["Mia", "Rex"])
        storybook = str(Path(sys.executable).parent / "storybook")
        command = [storybook, "--home", str(studio), "make", str(spec), "--ray", "--ray-address", cluster.address]
        result = subprocess.run(
            [*command, "--workers", "2", "--shared-root"], capture_output=True, text=True, timeout=240
        )
    finally:
        cluster.shutdown()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 pictures to draw on Ray (2 workers, 0 GPU each)" in result.stdout
    assert "cluster.yaml: 9 pictures drawn on Ray (written by the workers into the shared data root), 0 reused" in (
        " ".join(result.stdout.split())
    )
    assert len(list((studio / "books" / "cluster" / "images").glob("*.png"))) == 9
    assert len(PdfReader(tmp_path / "out" / "cluster.pdf").pages) == 12
