"""Background jobs: state on disk while running and after, cancellation between steps, stale jobs, no double start."""

import os
import threading

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
