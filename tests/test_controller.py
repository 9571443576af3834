"""The search controller's core, in-process: stages, leases, idempotency, early stopping, restarts, status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controller_helpers import fake_profile, micro_doc, micro_spec, trainer_request
from gpunet.controller import InvalidRequestError, SearchController, UnknownWorkError
from gpunet.controller.state import ControllerState
from gpunet.rpc import pb
from gpunet.spec import load_spec


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def searching(tmp_path: Path, clock: Clock, lease_s: float = 10.0, **spec_kwargs) -> SearchController:
    ctl = SearchController(micro_spec(**spec_kwargs), tmp_path, lease_s=lease_s, clock=clock, round_interval_s=0)
    assert fake_profile(ctl) == 14
    assert ctl.state.phase == "Searching"
    return ctl


def progress(task: pb.TrainingAssignment, worker: str, epoch: int, top1: float, ckpt: str | None = None) -> pb.ProgressReport:
    return pb.ProgressReport(worker_id=worker, candidate_id=task.candidate_id, lease_id=task.lease_id, epoch=epoch, top1=top1,
                             checkpoint_path=ckpt or f"{task.checkpoint_path}", train_loss=1.0)


def result(task: pb.TrainingAssignment, worker: str, top1: float, epochs: int = 2, **kw) -> pb.ResultReport:
    return pb.ResultReport(worker_id=worker, candidate_id=task.candidate_id, lease_id=task.lease_id, top1=top1, epochs=epochs,
                           checkpoint_path=task.checkpoint_path, **kw)


def test_stages_fill_the_table_stratify_and_propose_ahead(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    status = ctl.status()
    assert status.latency_table.layers_needed == status.latency_table.layers_measured == 14
    assert status.tiers[0].pool_size == 16  # every micro network lies in 0.1 ms +- 50%
    assert status.candidates.queued >= 2, "proposals are computed before any trainer asks"
    assert (tmp_path / "stratification.json").exists() and ctl.table.medians()
    assert all(c.latency_ms == pytest.approx(0.01 * len(ctl.space.decode(c.vector).layer_specs())) for c in ctl.candidates())


def test_trainers_wait_while_profiling_and_profilers_are_sent_home_after(tmp_path: Path, clock: Clock) -> None:
    ctl = SearchController(micro_spec(), tmp_path, clock=clock, round_interval_s=0)
    assert ctl.request_work(trainer_request("t")).WhichOneof("work") == "wait"
    fake_profile(ctl)
    answer = ctl.request_work(pb.WorkRequest(worker_id="p2", kind=pb.WORKER_KIND_PROFILER, device="test-cpu"))
    assert answer.WhichOneof("work") == "done"


def test_request_work_is_idempotent(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    first = ctl.request_work(trainer_request("w1")).candidate
    clock.now += 5
    again = ctl.request_work(trainer_request("w1")).candidate
    assert (again.candidate_id, again.lease_id) == (first.candidate_id, first.lease_id)
    assert again.lease_deadline_unix_s == pytest.approx(first.lease_deadline_unix_s + 5)
    other = ctl.request_work(trainer_request("w2")).candidate
    assert other.candidate_id != first.candidate_id


def test_expired_lease_requeues_and_next_worker_resumes_from_last_checkpoint(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    assert ctl.report_progress(progress(task, "w1", 1, 0.5)).action == pb.PROGRESS_ACTION_CONTINUE
    clock.now += 11
    assert ctl.expire_leases() == 1
    again = ctl.request_work(trainer_request("w2")).candidate
    assert again.candidate_id == task.candidate_id and again.lease_id != task.lease_id
    assert again.resume_checkpoint == task.checkpoint_path and again.start_epoch == 1 and again.attempt == 2
    # The silent worker comes back: it is told to abandon, and its result is ignored.
    assert ctl.report_progress(progress(task, "w1", 2, 0.6)).action == pb.PROGRESS_ACTION_ABANDON
    late = ctl.report_result(result(task, "w1", 0.6))
    assert not late.accepted and "late" in late.reason
    assert ctl.status().lease_expiries == 1


def test_heartbeats_keep_a_lease_alive(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    for _ in range(5):
        clock.now += 6
        beat = pb.ProgressReport(worker_id="w1", candidate_id=task.candidate_id, lease_id=task.lease_id, heartbeat=True)
        assert ctl.report_progress(beat).action == pb.PROGRESS_ACTION_CONTINUE
        assert ctl.expire_leases() == 0


def test_duplicate_results_are_ignored(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    ctl.report_progress(progress(task, "w1", 1, 0.4))
    # A retried progress report (same epoch and checkpoint) changes nothing.
    ctl.report_progress(progress(task, "w1", 1, 0.4))
    assert ctl.state.candidates[task.candidate_id].history == [0.4]
    assert ctl.report_result(result(task, "w1", 0.7)).accepted
    dup = ctl.report_result(result(task, "w1", 0.9))
    assert not dup.accepted and "duplicate" in dup.reason
    cand = ctl.state.candidates[task.candidate_id]
    assert cand.state == "completed" and cand.top1 == 0.7
    assert ctl.status().candidates.completed == 1


def test_preempted_release_requeues_at_once_and_is_not_a_failure(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    ctl.report_progress(progress(task, "w1", 1, 0.5))
    rel = ctl.release_lease(pb.ReleaseRequest(worker_id="w1", lease_id=task.lease_id, reason=pb.RELEASE_REASON_PREEMPTED,
                                              checkpoint_path=task.checkpoint_path, epoch=1))
    assert rel.released and rel.requeued and rel.work_id == task.candidate_id
    cand = ctl.state.candidates[task.candidate_id]
    assert cand.state == "queued" and cand.preemptions == 1 and cand.failures == 0
    # Re-queued work goes first, to the next worker that asks, without waiting for the lease to expire.
    again = ctl.request_work(trainer_request("w2")).candidate
    assert again.candidate_id == task.candidate_id and again.start_epoch == 1
    assert ctl.status().preemptions == 1


def test_operator_releases_a_lost_pods_lease_by_worker_id(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("pod-a")).candidate
    rel = ctl.release_lease(pb.ReleaseRequest(worker_id="pod-a", reason=pb.RELEASE_REASON_PREEMPTED))
    assert rel.released and rel.work_id == task.candidate_id
    assert not ctl.release_lease(pb.ReleaseRequest(worker_id="pod-a", reason=pb.RELEASE_REASON_PREEMPTED)).released


def test_failures_beyond_max_retries_fail_the_candidate(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)  # maxRetries: 1
    task = ctl.request_work(trainer_request("w1")).candidate
    assert ctl.release_lease(pb.ReleaseRequest(worker_id="w1", reason=pb.RELEASE_REASON_FAILED, message="OOM")).requeued
    task2 = ctl.request_work(trainer_request("w1")).candidate
    assert task2.candidate_id == task.candidate_id
    assert not ctl.release_lease(pb.ReleaseRequest(worker_id="w1", reason=pb.RELEASE_REASON_FAILED)).requeued
    assert ctl.state.candidates[task.candidate_id].state == "failed"
    ctl.step()
    assert ctl.state.candidates[task.candidate_id].told


def test_median_stopping_rule_compares_with_completed_candidates_running_averages(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock, epochs=3, min_epochs=2, budget=4)
    tasks = []
    for w in ("a", "b", "c"):
        ctl.step()
        tasks.append(ctl.request_work(trainer_request(w)).candidate)
    # a and b run to the end: running averages after 2 epochs 0.75 and 0.65, median 0.70
    for task, w, top1 in zip(tasks[:2], ("a", "b"), (0.8, 0.7)):
        ctl.report_progress(progress(task, w, 1, top1 - 0.1))
        # b (best 0.70 < a's 0.75) goes on: one completed peer is fewer than minPeers (2)
        assert ctl.report_progress(progress(task, w, 2, top1, ckpt=task.checkpoint_path + ".2")).action == pb.PROGRESS_ACTION_CONTINUE
        ctl.report_progress(progress(task, w, 3, top1, ckpt=task.checkpoint_path + ".3"))
        assert ctl.report_result(result(task, w, top1, epochs=3)).accepted
    # Epoch 1 is before minEpochs: never stopped.
    assert ctl.report_progress(progress(tasks[2], "c", 1, 0.1)).action == pb.PROGRESS_ACTION_CONTINUE
    answer = ctl.report_progress(progress(tasks[2], "c", 2, 0.69, ckpt=tasks[2].checkpoint_path + ".2"))
    assert answer.action == pb.PROGRESS_ACTION_STOP and "median 0.7000 of the running averages of 2" in answer.reason
    assert ctl.report_result(result(tasks[2], "c", 0.69, epochs=2, stopped_early=True)).accepted
    assert ctl.state.candidates[tasks[2].candidate_id].state == "stopped"


def test_median_stopping_rule_keeps_a_candidate_at_the_median(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock, epochs=3, min_epochs=2, budget=4)
    tasks = []
    for w in ("a", "b", "c"):
        ctl.step()
        tasks.append(ctl.request_work(trainer_request(w)).candidate)
    for task, w, top1 in zip(tasks[:2], ("a", "b"), (0.8, 0.7)):
        for epoch in (1, 2, 3):
            ctl.report_progress(progress(task, w, epoch, top1 - 0.1 * (epoch == 1), ckpt=f"{task.checkpoint_path}.{epoch}"))
        ctl.report_result(result(task, w, top1, epochs=3))
    ctl.report_progress(progress(tasks[2], "c", 1, 0.1))
    # best 0.70 is not strictly worse than the median 0.70 of the running averages
    assert ctl.report_progress(progress(tasks[2], "c", 2, 0.70, ckpt=tasks[2].checkpoint_path + ".2")).action == pb.PROGRESS_ACTION_CONTINUE


def test_asha_stops_a_candidate_outside_the_top_half_of_its_rung_running_peers_included(tmp_path: Path, clock: Clock) -> None:
    doc = micro_doc(epochs=3, budget=4)
    doc["spec"]["training"]["earlyStopping"] = {"rule": "asha", "minEpochs": 1, "minPeers": 1, "minResource": 1,
                                                "reductionFactor": 2}
    ctl = SearchController(load_spec(doc), tmp_path, lease_s=10.0, clock=clock, round_interval_s=0)
    fake_profile(ctl)
    tasks = []
    for w in ("a", "b", "c"):
        ctl.step()
        tasks.append(ctl.request_work(trainer_request(w)).candidate)
    assert ctl.report_progress(progress(tasks[0], "a", 1, 0.8)).action == pb.PROGRESS_ACTION_CONTINUE  # no peer yet
    answer = ctl.report_progress(progress(tasks[1], "b", 1, 0.7))  # rung 0 (epoch 1): 0.7 is not the top 1 of 2
    assert answer.action == pb.PROGRESS_ACTION_STOP and "ASHA" in answer.reason
    assert ctl.report_progress(progress(tasks[0], "a", 2, 0.5, ckpt=tasks[0].checkpoint_path + ".2")).action \
        == pb.PROGRESS_ACTION_CONTINUE  # rung 1 (epoch 2): a is alone there
    assert ctl.report_progress(progress(tasks[2], "c", 1, 0.9)).action == pb.PROGRESS_ACTION_CONTINUE  # top 1 of 3


def test_early_stopping_can_be_turned_off(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock, epochs=3, early_stopping=False)
    tasks = [ctl.request_work(trainer_request(w)).candidate for w in ("a", "b")]
    ctl.step()
    tasks.append(ctl.request_work(trainer_request("c")).candidate)
    for task, w, top1 in zip(tasks, "abc", (0.9, 0.8, 0.1)):
        assert ctl.report_progress(progress(task, w, 2, top1)).action == pb.PROGRESS_ACTION_CONTINUE


def test_malformed_requests_are_invalid_arguments_with_a_message(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    with pytest.raises(InvalidRequestError, match="worker_id"):
        ctl.request_work(pb.WorkRequest(kind=pb.WORKER_KIND_TRAINER))
    with pytest.raises(InvalidRequestError, match="kind"):
        ctl.request_work(pb.WorkRequest(worker_id="w"))
    with pytest.raises(InvalidRequestError, match="top1"):
        ctl.report_progress(progress(task, "w1", 1, 1.5))
    with pytest.raises(InvalidRequestError, match="epoch"):
        ctl.report_progress(progress(task, "w1", 9, 0.5))
    with pytest.raises(InvalidRequestError, match="reason"):
        ctl.release_lease(pb.ReleaseRequest(worker_id="w1"))
    with pytest.raises(UnknownWorkError, match="nope"):
        ctl.report_result(pb.ResultReport(worker_id="w1", candidate_id="nope", lease_id="x", top1=0.5))


def test_corrupt_checkpoint_restart_is_recorded(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    ctl.report_progress(progress(task, "w1", 1, 0.5))
    ctl.release_lease(pb.ReleaseRequest(worker_id="w1", reason=pb.RELEASE_REASON_PREEMPTED))
    again = ctl.request_work(trainer_request("w2")).candidate
    ctl.report_progress(progress(again, "w2", 1, 0.45))  # the epoch went back: a restart
    assert ctl.report_result(result(again, "w2", 0.6, restarted_from_scratch=True, restart_reason="unreadable (bad zip)")).accepted
    cand = ctl.state.candidates[task.candidate_id]
    assert cand.restarts_from_scratch == 1 and any("restarted from scratch: unreadable" in e for e in cand.events)


def test_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock, budget=4)
    done = ctl.request_work(trainer_request("w1")).candidate
    assert ctl.report_result(result(done, "w1", 0.77)).accepted
    running = ctl.request_work(trainer_request("w2")).candidate
    ctl.report_progress(progress(running, "w2", 1, 0.5))
    ctl.step()
    before = {c.id: (c.state, c.vector, c.top1) for c in ctl.candidates()}
    ctl.table.close()  # a crash: no orderly close() of the driver
    ctl.store.close()

    ctl2 = SearchController(micro_spec(budget=4), tmp_path, lease_s=10.0, clock=clock, round_interval_s=0)
    after = {c.id: (c.state, c.vector, c.top1) for c in ctl2.candidates()}
    assert after == before
    # The running worker carries on with its lease; the finished result is not taken twice.
    assert ctl2.report_progress(progress(running, "w2", 2, 0.6, ckpt=running.checkpoint_path + ".2")).action != pb.PROGRESS_ACTION_ABANDON
    assert not ctl2.report_result(result(done, "w1", 0.99)).accepted
    assert ctl2.report_result(result(running, "w2", 0.6)).accepted
    # Finish the search: every candidate is trained once, ids are unique, the budget is respected.
    for i in range(10):
        ctl2.step()
        answer = ctl2.request_work(trainer_request(f"x{i}"))
        if answer.WhichOneof("work") == "done":
            break
        if answer.WhichOneof("work") == "candidate":
            assert ctl2.report_result(result(answer.candidate, f"x{i}", 0.5 + i / 100)).accepted
    assert ctl2.state.phase == "Succeeded"
    cands = ctl2.candidates()
    assert len(cands) == 4 and len({tuple(c.vector) for c in cands}) == 4
    assert {c.id: c.top1 for c in cands}[done.candidate_id] == 0.77
    assert all(c.told for c in cands)
    saved = ControllerState.load(tmp_path)
    assert saved.phase == "Succeeded" and len(saved.candidates) == 4
    ctl2.close()
    exported = json.loads((tmp_path / "state.json").read_text())  # the readable export written on close
    assert exported["phase"] == "Succeeded" and len(exported["candidates"]) == 4
    assert sorted(p.name for p in (tmp_path / "searchers").iterdir()) == ["tier-0-v%d.json" % ctl2.state.searcher_versions[0]]


def test_status_is_bounded_and_counts_states(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock, budget=6)
    task = ctl.request_work(trainer_request("w1")).candidate
    ctl.report_result(result(task, "w1", 0.66))
    ctl.step()
    status = ctl.status(pb.StatusRequest(max_candidates=1))
    assert status.phase == pb.SEARCH_PHASE_SEARCHING and status.search_name == "micro"
    assert status.candidates.completed == 1 and status.candidates.budget == 6
    assert len(status.records) == 1 and status.records_truncated
    assert status.tiers[0].best_candidate_id == task.candidate_id and status.tiers[0].best_top1 == pytest.approx(0.66)
    assert list(status.tiers[0].best_vector) == list(task.vector)


def test_tiers_without_networks_fail_the_search_with_a_message(tmp_path: Path, clock: Clock) -> None:
    ctl = SearchController(micro_spec(tiers=(5.0,), tolerance=0.1), tmp_path, clock=clock, round_interval_s=0)
    fake_profile(ctl)
    assert ctl.state.phase == "Failed" and "spec.latency.tiers" in ctl.state.message


def test_searcher_in_its_own_process_proposes_and_restores(tmp_path: Path, clock: Clock) -> None:
    ctl = SearchController(micro_spec(budget=3), tmp_path, clock=clock, round_interval_s=0, searcher_processes=True)
    fake_profile(ctl)
    for _ in range(3):
        ctl.step()
    task = ctl.request_work(trainer_request("w1")).candidate
    assert ctl.report_result(result(task, "w1", 0.5)).accepted
    ctl.step()
    first = {c.id: c.vector for c in ctl.candidates()}
    assert len(first) == 3 and ctl.state.candidates[task.candidate_id].told
    ctl.close()
    ctl2 = SearchController(micro_spec(budget=3), tmp_path, clock=clock, round_interval_s=0, searcher_processes=True)
    for i in range(6):
        answer = ctl2.request_work(trainer_request(f"x{i}"))
        if answer.WhichOneof("work") == "candidate":
            ctl2.report_result(result(answer.candidate, f"x{i}", 0.6))
        ctl2.step()
    assert ctl2.state.phase == "Succeeded"
    assert {c.id: c.vector for c in ctl2.candidates()} == first
    ctl2.close()


def profiler_request(worker_id: str) -> pb.WorkRequest:
    return pb.WorkRequest(worker_id=worker_id, kind=pb.WORKER_KIND_PROFILER, device="test-cpu")


def test_profiler_batches_live_under_the_same_leases_as_candidates(tmp_path: Path, clock: Clock) -> None:
    ctl = SearchController(micro_spec(), tmp_path, lease_s=10.0, clock=clock, round_interval_s=0, profile_batch_size=8)
    assert ctl.request_work(profiler_request("p1")).WhichOneof("work") == "wait"  # fixes the target; planning
    ctl.step()
    first = ctl.request_work(profiler_request("p1")).layers
    assert len(first.layer_keys_json) == 8 and ctl.status().latency_table.batches_leased == 1
    clock.now += 5
    again = ctl.request_work(profiler_request("p1")).layers  # asking again renews the same lease
    assert (again.batch_id, again.lease_id) == (first.batch_id, first.lease_id)
    assert again.lease_deadline_unix_s == pytest.approx(first.lease_deadline_unix_s + 5)
    clock.now += 11
    assert ctl.expire_leases() == 1 and ctl.status().lease_expiries == 1
    taken = ctl.request_work(profiler_request("p2")).layers
    assert taken.batch_id == first.batch_id and taken.lease_id != first.lease_id
    late = ctl.report_latencies(pb.LatencyReport(worker_id="p1", batch_id=first.batch_id, lease_id=first.lease_id,
                                                 measurements=[pb.LayerMeasurement(layer_key_json=k, latency_ms=0.01, runs=1)
                                                               for k in first.layer_keys_json]))
    assert not late.accepted and len(ctl.table) == 0
    rel = ctl.release_lease(pb.ReleaseRequest(worker_id="p2", reason=pb.RELEASE_REASON_PREEMPTED))
    assert rel.released and rel.requeued and rel.work_id == first.batch_id and ctl.status().preemptions == 1
    other = ctl.request_work(profiler_request("p3")).layers
    assert other.batch_id == first.batch_id
    with pytest.raises(InvalidRequestError, match=r"measurements\[0\].layer_key_json: got .*; expected a key of batch"):
        ctl.report_latencies(pb.LatencyReport(worker_id="p3", batch_id=other.batch_id, lease_id=other.lease_id,
                                              measurements=[pb.LayerMeasurement(layer_key_json=ctl.request_work(
                                                  profiler_request("p4")).layers.layer_keys_json[0], latency_ms=0.01, runs=1)]))


def test_the_lease_book_holds_one_lease_per_worker_and_per_work() -> None:
    from gpunet.controller.leases import BATCH, CANDIDATE, LeaseBook

    numbers = iter(range(1, 100))
    book = LeaseBook(10.0, lambda: next(numbers))
    a = book.grant(CANDIDATE, "t0-c0000", "w1", now=100.0)
    assert a.id.startswith("L1-") and a.deadline == 110.0 and book.held_by("w1") is a is book.of(CANDIDATE, "t0-c0000")
    b = book.grant(BATCH, "b1", "w1", now=101.0)  # a worker holds one lease: the older one is gone
    assert book.of(CANDIDATE, "t0-c0000") is None and book.held_by("w1") is b and len(book) == 1
    c = book.grant(BATCH, "b1", "w2", now=102.0)  # and a piece of work has one holder
    assert book.held_by("w1") is None and book.of(BATCH, "b1") is c and c.id.startswith("L3-")
    assert book.renew(c, 105.0) == 115.0 and book.expired(114.9) == [] and book.expired(115.1) == [c]
    kept = book.grant(CANDIDATE, "t0-c0001", "w3", now=0.0, lease_id="L7-restart")
    assert kept.id == "L7-restart" and book.count(BATCH) == 1 and book.count(CANDIDATE) == 1
    book.release(c)
    book.release(c)  # releasing twice is harmless
    assert book.of(BATCH, "b1") is None and len(book) == 1


def test_lease_expiries_are_failed_attempts_and_a_poison_candidate_fails_with_its_error(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)  # maxRetries: 1
    task = ctl.request_work(trainer_request("w1")).candidate
    clock.now += 11
    assert ctl.expire_leases() == 1
    cand = ctl.state.candidates[task.candidate_id]
    assert cand.state == "queued" and cand.failures == 1 and "expired" in cand.error
    again = ctl.request_work(trainer_request("w2")).candidate
    assert again.candidate_id == task.candidate_id and again.attempt == 2
    clock.now += 11
    assert ctl.expire_leases() == 1
    cand = ctl.state.candidates[task.candidate_id]
    assert cand.state == "failed" and cand.failures == 2 and again.lease_id in cand.error
    assert any("failed after 2 failed attempts" in e for e in cand.events)
    # No trainer gets it again, and the searcher is told of the failure.
    assert all(ctl.request_work(trainer_request(f"x{i}")).candidate.candidate_id != task.candidate_id for i in range(3))
    ctl.step()
    assert ctl.state.candidates[task.candidate_id].told
    assert ctl.status().candidates.failed == 1


def test_a_failed_release_keeps_its_message_as_the_candidates_error(tmp_path: Path, clock: Clock) -> None:
    ctl = searching(tmp_path, clock)
    task = ctl.request_work(trainer_request("w1")).candidate
    ctl.release_lease(pb.ReleaseRequest(worker_id="w1", reason=pb.RELEASE_REASON_FAILED, message="OutOfMemoryError: CUDA"))
    ctl.request_work(trainer_request("w1"))
    ctl.release_lease(pb.ReleaseRequest(worker_id="w1", reason=pb.RELEASE_REASON_FAILED, message="OutOfMemoryError: again"))
    cand = ctl.state.candidates[task.candidate_id]
    assert cand.state == "failed" and cand.error == "OutOfMemoryError: again"


def test_the_pruners_tier_index_follows_every_change_to_the_candidates(tmp_path: Path, clock: Clock) -> None:
    # The controller decides early stops on an index it keeps up to date as candidates are saved (not on a walk
    # over every candidate): after progress, duplicates, stops, preemptions, lease expiries and results it must
    # hold what an index built from scratch holds.
    import random

    from gpunet.controller.searching import curve_of
    from gpunet.search.pruners import PeerIndex

    ctl = searching(tmp_path, clock, epochs=3, min_epochs=1, budget=12)
    rng = random.Random(3)
    running: dict[str, tuple[pb.TrainingAssignment, int]] = {}

    def check() -> None:
        index = ctl.curves.index(0, False)
        fresh = PeerIndex(curve_of(c) for c in ctl.state.candidates.values() if c.tier == 0)
        for step in (1, 2, 3):
            assert index.values_at(step) == fresh.values_at(step)
            assert index.averages_at(step) == fresh.averages_at(step)

    ctl.curves.index(0, False)  # built now, then kept up to date
    for turn in range(80):
        ctl.step()
        worker = f"w{rng.randrange(4)}"
        if worker not in running:
            reply = ctl.request_work(trainer_request(worker))
            if reply.WhichOneof("work") == "candidate":
                running[worker] = (reply.candidate, reply.candidate.start_epoch)
            continue
        task, epoch = running[worker]
        move = rng.random()
        if move < 0.1:
            ctl.release_lease(pb.ReleaseRequest(worker_id=worker, lease_id=task.lease_id,
                                                reason=pb.RELEASE_REASON_PREEMPTED, epoch=epoch))
            del running[worker]
        elif move < 0.15:
            clock.now += 30  # every lease expires
            ctl.expire_leases()
            running.clear()
        elif epoch < 3 and move < 0.9:
            answer = ctl.report_progress(progress(task, worker, epoch + 1, round(rng.random(), 2),
                                                  ckpt=f"{task.checkpoint_path}.{epoch + 1}"))
            if answer.action == pb.PROGRESS_ACTION_ABANDON:
                del running[worker]
            elif answer.action == pb.PROGRESS_ACTION_STOP or rng.random() < 0.1:
                ctl.report_result(result(task, worker, 0.5, epochs=epoch + 1, stopped_early=True))
                del running[worker]
            else:
                running[worker] = (task, epoch + 1)
        else:
            ctl.report_result(result(task, worker, 0.5, epochs=epoch))
            del running[worker]
        clock.now += 1
        check()
    states = {c.state for c in ctl.state.candidates.values()}
    assert {"completed", "stopped"} <= states, states


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_searcher_processes_run_at_the_priority_asked(tmp_path: Path) -> None:
    """The controller's own pod runs its searchers under SCHED_IDLE (woken RPC threads preempt them at once);
    ``gpunet run`` nices them, so that they keep a share of CPUs its trainers use."""
    from gpunet.controller.proposer import SEARCHER_NICE, ProcessSearcher

    spec = micro_spec(budget=3)
    algorithm = {"name": "random", "seed": 0, "initial_samples": 1, "budget": 3, "options": {}}
    pool = [[int(x) for x in spec.space().sobol(1)[0]]]
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    for priority, policy, nice in (("idle", os.SCHED_IDLE, None), ("nice", os.SCHED_OTHER, own_nice + SEARCHER_NICE)):
        searcher = ProcessSearcher(algorithm, spec.search_space, pool, 0, None, priority=priority)
        try:
            searcher.round([], 0, tmp_path / f"{priority}.json")  # the child has set its priority by now
            assert os.sched_getscheduler(searcher.pid) == policy, priority
            if nice is not None:
                assert os.getpriority(os.PRIO_PROCESS, searcher.pid) == min(nice, 19)
        finally:
            searcher.close()
    with pytest.raises(ValueError, match="searcher priority: got 'realtime'"):
        ProcessSearcher(algorithm, spec.search_space, pool, 0, None, priority="realtime")
