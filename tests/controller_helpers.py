"""Shared helpers of the controller, worker and run tests: a micro search space and a fake profiler."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from gpunet.controller.state import PHASE_PROFILING
from gpunet.rpc import pb
from gpunet.spec import API_VERSION, KIND, SearchSpec, load_spec

#: 16 networks (4 binary digits) of gpunet-tiny's structure: 14 layer keys, trains in about a second per epoch.
MICRO_SPACE = {
    "preset": "gpunet-tiny",
    "resolution": [28],
    "stages": {
        0: {"filters": [8]},
        1: {"kernel": [3], "act": ["relu"], "layers": [1]},
        2: {"filters": [16], "kernel": [3], "expansion": [2], "se": [0], "act": ["relu"], "layers": [1]},
        3: {"filters": [24], "kernel": [3], "expansion": [2], "se": [0], "act": ["relu"], "layers": [1]},
        4: {"filters": [32], "kernel": [3], "expansion": [2], "se": [0], "act": ["relu"], "layers": [1, 2]},
        5: {"filters": [48], "kernel": [3], "expansion": [2], "se": [0], "act": ["relu"], "layers": [0, 1]},
        6: {"filters": [64], "kernel": [3, 5], "expansion": [2], "se": [0], "act": ["relu"], "layers": [1]},
        7: {"filters": [96], "kernel": [3], "expansion": [2], "se": [0], "act": ["relu"], "layers": [0, 1]},
    },
}
#: Every layer of the fake profiler takes this long, so a network's estimate is 0.01 ms x its layer count (9..12).
FAKE_LAYER_MS = 0.01


def micro_doc(name: str = "micro", *, budget: int = 4, epochs: int = 2, tiers: tuple[float, ...] = (0.1,),
              tolerance: float = 0.5, train_subset: int = 300, val_subset: int = 200, algorithm: str = "random",
              early_stopping: bool = True, min_epochs: int = 1, batch_size: int = 32) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
        "spec": {
            "searchSpace": copy.deepcopy(MICRO_SPACE),
            "latency": {"backend": "onnxruntime", "device": "cpu", "tiers": list(tiers), "tolerance": tolerance, "samples": 64},
            "algorithm": {"name": algorithm, "seed": 0, "budget": budget, "initialSamples": 2},
            "training": {
                "dataset": {"kind": "fashion-mnist", "trainSubset": train_subset, "valSubset": val_subset},
                "epochs": epochs, "batchSize": batch_size,
                "recipe": {"lr": 0.005, "randAugment": "", "ema": 0.0, "reprob": 0.0, "dropRate": 0.0, "dropPathRate": 0.0},
                "earlyStopping": {"enabled": early_stopping, "minEpochs": min_epochs},
                "maxRetries": 1,
            },
            "trainers": {"maxReplicas": 2},
        },
    }


def micro_spec(**kwargs: Any) -> SearchSpec:
    return load_spec(micro_doc(**kwargs))


def write_spec(path: Path, **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(micro_doc(**kwargs), sort_keys=False))
    return path


def fake_profile(controller: Any, device: str = "test-cpu", worker_id: str = "fake-profiler") -> int:
    """Fill the latency table through the profiler RPCs with :data:`FAKE_LAYER_MS` per layer, then let the
    controller stratify and propose. Returns the number of layers reported."""
    reported = 0
    for _ in range(1000):
        if controller.state.phase != PHASE_PROFILING:
            break
        response = controller.request_work(pb.WorkRequest(worker_id=worker_id, kind=pb.WORKER_KIND_PROFILER, device=device))
        work = response.WhichOneof("work")
        if work == "layers":
            task = response.layers
            ms = [pb.LayerMeasurement(layer_key_json=k, latency_ms=FAKE_LAYER_MS, runs=1) for k in task.layer_keys_json]
            assert controller.report_latencies(pb.LatencyReport(worker_id=worker_id, batch_id=task.batch_id,
                                                                lease_id=task.lease_id, measurements=ms)).accepted
            reported += len(ms)
        elif work == "done":
            break
        controller.step()
    controller.step()
    return reported


def trainer_request(worker_id: str) -> pb.WorkRequest:
    return pb.WorkRequest(worker_id=worker_id, kind=pb.WORKER_KIND_TRAINER, device="cpu")
