"""Background jobs: state on disk while running and after, cancellation between steps, stale jobs, no double start."""

import os
import threading
import time

import pytest

from storybook.errors import StorybookError
from storybook.jobs import JobState, job_file, read_job, start_job


def test_a_job_reports_progress_on_disk_and_its_result(tmp_path):
    step_done, go_on = threading.Event(), threading.Event()

    def work(progress):
        progress(1, 3, "first picture")
        step_done.set()
        go_on.wait(10)
        progress(3, 3, "last picture")
        return "3 pictures drawn"

    thread = start_job(tmp_path, "render", "my-book", work)
    step_done.wait(10)
    running = read_job(tmp_path, "render", "my-book")  # what a second tab sees
    assert (running.status, running.done, running.total, running.message) == ("running", 1, 3, "first picture")
    with pytest.raises(StorybookError, match="already being worked on"):
        start_job(tmp_path, "render", "my-book", work)
    go_on.set()
    thread.join(10)
    finished = read_job(tmp_path, "render", "my-book")
    assert (finished.status, finished.message, finished.done) == ("done", "3 pictures drawn", 3)
    assert finished.finished_at is not None


def test_cancel_stops_at_the_next_step_and_errors_are_kept(tmp_path):
    from storybook.jobs import cancel_job

    steps_taken = []

    def work(progress):
        for step in range(1, 1000):
            steps_taken.append(step)
            if step == 5:
                cancel_job(tmp_path, "train", "mia")
            progress(step, 1000, "")
        return "finished"

    start_job(tmp_path, "train", "mia", work).join(10)
    assert read_job(tmp_path, "train", "mia").status == "cancelled" and steps_taken[-1] == 5

    def broken(progress):
        raise ValueError("the model file is damaged")

    start_job(tmp_path, "train", "mia", broken).join(10)
    failed = read_job(tmp_path, "train", "mia")
    assert failed.status == "failed" and "damaged" in failed.message


def test_a_job_left_running_by_a_stopped_server_reads_as_interrupted(tmp_path):
    stale = JobState(kind="render", target="book", status="running", pid=2**22 + 12345, started_at="2026-01-01T00:00Z")
    job_file(tmp_path, "render", "book").parent.mkdir(parents=True)
    job_file(tmp_path, "render", "book").write_text(stale.model_dump_json())
    state = read_job(tmp_path, "render", "book")
    assert state.status == "interrupted" and "start it again" in state.message
    start_job(tmp_path, "render", "book", lambda progress: "drawn").join(10)  # may start again
    assert read_job(tmp_path, "render", "book").status == "done"

    restarted = stale.model_copy(update={"pid": os.getpid(), "process": "a server before a restart"})
    job_file(tmp_path, "render", "book").write_text(restarted.model_dump_json())  # same pid, another process
    assert read_job(tmp_path, "render", "book").status == "interrupted"
    job_file(tmp_path, "render", "book").write_text("{damaged")
    assert read_job(tmp_path, "render", "book") is None


def test_gpu_jobs_of_every_kind_take_turns_and_the_waiting_one_says_so(tmp_path):
    training_holds, may_finish, on_gpu = threading.Event(), threading.Event(), []

    def training(progress):
        on_gpu.append("train")
        training_holds.set()
        may_finish.wait(10)
        on_gpu.remove("train")
        return "trained"

    def rendering(progress):
        assert on_gpu == []  # never beside the training
        return "drawn"

    first = start_job(tmp_path, "train", "mia", training)
    training_holds.wait(10)
    second = start_job(tmp_path, "render", "my-book", rendering)
    deadline = time.time() + 10
    while "waiting for the GPU" not in (read_job(tmp_path, "render", "my-book").message or ""):
        assert time.time() < deadline
        time.sleep(0.05)
    waiting = read_job(tmp_path, "render", "my-book")
    assert waiting.status == "running" and waiting.message == "waiting for the GPU: train mia is using it"
    may_finish.set()
    first.join(10)
    second.join(10)
    assert read_job(tmp_path, "render", "my-book").status == "done"
    assert read_job(tmp_path, "train", "mia").message == "trained"


def test_a_job_waiting_for_the_gpu_can_be_cancelled_and_a_cpu_job_does_not_wait(tmp_path):
    from storybook.jobs import cancel_job

    holding, release = threading.Event(), threading.Event()

    def hold(progress):
        holding.set()
        release.wait(10)
        return "done"

    first = start_job(tmp_path, "train", "mia", hold)
    holding.wait(10)
    waiting = start_job(tmp_path, "export", "my-book", lambda progress: pytest.fail("ran beside the training"))
    cancel_job(tmp_path, "export", "my-book")
    waiting.join(10)
    assert read_job(tmp_path, "export", "my-book").status == "cancelled"
    start_job(tmp_path, "story", "my-book", lambda progress: "written", uses_gpu=False).join(10)
    assert read_job(tmp_path, "story", "my-book").status == "done"
    release.set()
    first.join(10)
