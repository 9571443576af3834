"""The controller owns all paths: worker-sent checkpoint paths outside the candidate's folder are refused
(INVALID_ARGUMENT), symlinks included, and nothing outside the state root is ever deleted (issue 13 item 1)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from controller_helpers import fake_profile, micro_spec, trainer_request
from gpunet.controller import InvalidRequestError, SearchController
from gpunet.controller.errors import grpc_status
from gpunet.rpc import pb


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def searching(root: Path, clock: Clock) -> SearchController:
    ctl = SearchController(micro_spec(), root, lease_s=10.0, clock=clock, round_interval_s=0)
    fake_profile(ctl)
    assert ctl.state.phase == "Searching"
    return ctl


def progress(task: pb.TrainingAssignment, epoch: int, path: str) -> pb.ProgressReport:
    return pb.ProgressReport(worker_id="w1", candidate_id=task.candidate_id, lease_id=task.lease_id, epoch=epoch,
                             top1=0.5, checkpoint_path=path, train_loss=1.0)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SearchController, pb.TrainingAssignment, Path, Path]:
    root, victim = tmp_path / "state", tmp_path / "victim.pt"
    victim.write_bytes(b"not the controller's")
    ctl = searching(root, Clock())
    task = ctl.request_work(trainer_request("w1")).candidate
    return ctl, task, root, victim


def test_assigned_checkpoint_path_is_derived_from_candidate_and_lease(setup) -> None:
    ctl, task, root, _ = setup
    assert task.checkpoint_path == str(root.resolve() / "checkpoints" / task.candidate_id / f"{task.lease_id}.pt")


@pytest.mark.parametrize("make_path", [
    lambda task, root, victim: str(victim),  # plainly outside
    lambda task, root, victim: f"{task.checkpoint_path}/../../../../victim.pt",  # traversal that text compare passes
    lambda task, root, victim: str(root / "checkpoints" / "t0-c9999" / "x.pt"),  # another candidate's folder
    lambda task, root, victim: str(root / "state.sqlite"),  # inside the root, but not a checkpoint
    lambda task, root, victim: "relative/x.pt",
])
def test_progress_with_a_path_outside_the_candidates_folder_is_refused(setup, make_path) -> None:
    ctl, task, root, victim = setup
    with pytest.raises(InvalidRequestError, match="checkpoint_path") as info:
        ctl.report_progress(progress(task, 1, make_path(task, root, victim)))
    assert grpc_status(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
    cand = ctl.state.candidates[task.candidate_id]
    assert cand.checkpoint == "" and cand.epoch == 0, "nothing of the refused report was stored"


def test_symlink_out_of_the_root_is_refused(setup) -> None:
    ctl, task, root, victim = setup
    folder = Path(task.checkpoint_path).parent
    folder.mkdir(parents=True)
    link = folder / "link.pt"
    os.symlink(victim, link)
    with pytest.raises(InvalidRequestError, match="checkpoint_path"):
        ctl.report_progress(progress(task, 1, str(link)))
    # The candidate's folder itself replaced by a symlink to elsewhere: refused too.
    os.unlink(link)
    folder.rmdir()
    os.symlink(victim.parent, folder)
    with pytest.raises(InvalidRequestError, match="checkpoint_path"):
        ctl.report_progress(progress(task, 1, str(folder / "victim.pt")))
    assert victim.exists()


def test_result_and_release_paths_are_checked_too(setup) -> None:
    ctl, task, root, victim = setup
    with pytest.raises(InvalidRequestError, match="checkpoint_path"):
        ctl.report_result(pb.ResultReport(worker_id="w1", candidate_id=task.candidate_id, lease_id=task.lease_id, top1=0.5,
                                          epochs=2, checkpoint_path=str(victim)))
    with pytest.raises(InvalidRequestError, match="checkpoint_path"):
        ctl.release_lease(pb.ReleaseRequest(worker_id="w1", lease_id=task.lease_id, reason=pb.RELEASE_REASON_PREEMPTED,
                                            checkpoint_path=str(victim), epoch=1))
    assert ctl.state.candidates[task.candidate_id].state == "running"


def test_old_checkpoint_is_deleted_only_inside_the_candidates_folder(setup) -> None:
    ctl, task, root, victim = setup
    first = Path(task.checkpoint_path)
    first.parent.mkdir(parents=True)
    first.write_bytes(b"epoch 1")
    ctl.report_progress(progress(task, 1, str(first)))
    second = first.with_suffix(".2.pt")
    second.write_bytes(b"epoch 2")
    ctl.report_progress(progress(task, 2, str(second)))
    assert not first.exists() and second.exists(), "the superseded checkpoint of the candidate is deleted"
    # A worker swaps the stored checkpoint for a symlink to a file outside the root: the next replacement
    # deletes nothing outside.
    second.unlink()
    os.symlink(victim, second)
    third = first.with_suffix(".3.pt")
    third.write_bytes(b"epoch 2 again")
    ctl.report_progress(progress(task, 2, str(third)))
    assert victim.read_bytes() == b"not the controller's"


def test_a_stored_path_outside_the_folder_is_dropped_on_restart(tmp_path: Path) -> None:
    clock = Clock()
    root = tmp_path / "state"
    ctl = searching(root, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    cand = ctl.state.candidates[task.candidate_id]
    cand.checkpoint, cand.epoch = str(tmp_path / "elsewhere.pt"), 1  # an older controller's unchecked state
    ctl._save(cand)
    ctl.close()
    again = SearchController(micro_spec(), root, lease_s=10.0, clock=clock, round_interval_s=0)
    cand = again.state.candidates[task.candidate_id]
    assert cand.checkpoint == "" and cand.epoch == 0
    assert again.request_work(trainer_request("w1")).candidate.resume_checkpoint == ""
    again.close()
