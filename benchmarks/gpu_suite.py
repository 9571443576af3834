"""The GPU suite (issue 14): the CUDA paths of the engine measured on one GPU, written to one JSON file.

    python benchmarks/gpu_suite.py --out h200.json            # on a CUDA machine (see benchmarks/gpu/run.sh)
    python benchmarks/gpu_suite.py --smoke --out smoke.json   # the same code paths on the CPU, tiny sizes

Sections (JSON keys), in order, each with its own time guard inside one overall budget (``--budget-s``):

- ``fidelity``: a torch CUDA FP16 latency table (CUDA graphs, CUDA events) of every layer of N Sobol-sampled
  ``gpunet`` networks (Table 1, 224-512 px, batch 1) against the same networks end to end, interleaved (Fig. 4):
  ``n, spearman, kendall, mre_raw, mre_calibrated, mean_ratio_table_to_e2e``.
- ``gpunets``: NVIDIA's GPUNet-0/1/2 end to end, FP16, batch 1 (``latency_ms``), next to the paper's GV100
  TensorRT figures. This is torch + CUDA graphs, not TensorRT.
- ``sampling``: Sobol sampling, table estimate and stratification of 1,000,000 networks against that table.
- ``training``: a GPUNet-1-sized candidate, AMP bf16 and fp16 with channels_last, our trainer against a plain
  timm loop on synthetic 224 px data (``images_per_s, images_per_s_timm, peak_mem_mib, throughput_ratio``).
- ``trainer``: the real ``gpunet_worker`` trainer (and profiler) against a local controller on an ImageNet-shaped
  ImageFolder, 2 epochs with checkpoints (``epoch_s, checkpoint_share``).

A section that fails records ``status: "error: ..."`` and the suite goes on; the file is rewritten after every
section, so a run killed by its timeout still leaves the sections it finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(p) for p in (ROOT, ROOT / "worker") if str(p) not in sys.path]


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU smoke run. Budgets are seconds."""

    device: str
    precision: str  # of the latency backend
    preset: str
    networks: int  # fidelity networks (issue: N >= 100)
    cudnn_benchmark: bool  # of the fidelity table and networks (False: cuDNN's heuristics, fast to profile)
    layer_timing: tuple[int, int, int]  # runs, warmup, rounds of each layer
    network_timing: tuple[int, int, int]  # the same for the fidelity networks end to end
    released_timing: tuple[int, int, int]  # the same for GPUNet-0/1/2
    samples: int  # networks sampled and stratified
    train_resolution: int
    train_batch: int
    train_steps: int  # steps per epoch of the throughput runs
    train_workers: int  # DataLoader workers
    trainer_images: tuple[int, int, int, int]  # classes, train and validation (held out of train/) images per class, side (px)
    trainer_batch: int
    trainer_workers: int
    profiler_runs: int
    write_processes: int
    budgets: dict[str, float]
    total_budget_s: float


GPU = Sizes(
    device="cuda", precision="fp16", preset="gpunet", networks=128, cudnn_benchmark=False, layer_timing=(25, 5, 5),
    network_timing=(50, 10, 5),
    released_timing=(200, 50, 10), samples=1_000_000, train_resolution=224, train_batch=256, train_steps=48,
    train_workers=8, trainer_images=(100, 128, 8, 256), trainer_batch=256, trainer_workers=12, profiler_runs=20,
    write_processes=16, total_budget_s=300.0,
    budgets={"fidelity_table": 75, "fidelity_e2e": 50, "gpunets": 15, "sampling": 25, "training": 60, "trainer": 70},
)
SMOKE = Sizes(
    device="cpu", precision="fp32", preset="gpunet-tiny", networks=10, cudnn_benchmark=False, layer_timing=(3, 1, 1),
    network_timing=(5, 1, 5),
    released_timing=(1, 0, 1), samples=20_000, train_resolution=28, train_batch=2, train_steps=2, train_workers=0,
    trainer_images=(3, 4, 2, 36), trainer_batch=4, trainer_workers=0, profiler_runs=3, write_processes=1,
    total_budget_s=240.0,  # generous: the shared 2-core machines can be loaded many times over
    budgets={"fidelity_table": 30, "fidelity_e2e": 20, "gpunets": 30, "sampling": 20, "training": 60, "trainer": 120},
)
#: Tier targets (ms) when GPUNet-0/1/2 were not measured.
DEFAULT_TIERS_MS = [0.5, 1.0, 2.0]
SEED = 0


def metadata(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    import numpy
    import timm
    import torch

    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": os.environ.get("GPUNET_SUITE_COMMAND") or shlex.join(["python", *sys.argv]),
        "mode": "smoke" if args.smoke else "gpu", "device": sizes.device, "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "timm": timm.__version__, "numpy": numpy.__version__, "host": platform.node(), "cpus": os.cpu_count(),
        "budget_s": sizes.total_budget_s,
        "latency_backend": f"torch {torch.__version__}, {sizes.precision}, batch 1"
                           + (", CUDA graphs, CUDA events (not TensorRT)" if sizes.device == "cuda" else ", CPU 1 thread"),
    }
    if sizes.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_memory_mib=round(props.total_memory / 2**20), gpu_multiprocessors=props.multi_processor_count)
    carried = os.environ.get("GPUNET_CARRIED")
    if carried and Path(carried).is_file():
        meta["carried_wheels"] = json.loads(Path(carried).read_text())
    manifest = ROOT / ".whl" / "manifest.json"
    try:
        meta["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                            check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # the device gets the working tree without .git
        meta["git_commit"] = None
    if manifest.is_file():
        meta["wheels_prepared_at_commit"] = json.loads(manifest.read_text()).get("commit")
    return meta


class Suite:
    """Runs the sections in order under one deadline and rewrites the JSON file after each."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, out: Path) -> None:
        self.args, self.sizes, self.out = args, sizes, out
        self.start = time.perf_counter()
        self.deadline = self.start + sizes.total_budget_s
        self.result: dict[str, Any] = {"meta": metadata(args, sizes)}
        self.write()

    def write(self) -> None:
        from gpunet.fileio import write_json_atomic

        self.result["meta"]["wall_s"] = round(time.perf_counter() - self.start, 1)
        write_json_atomic(self.out, self.result, indent=2)

    def section_deadline(self, *names: str) -> float:
        return min(time.perf_counter() + sum(self.sizes.budgets[n] for n in names), self.deadline)

    def run(self, key: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        if t0 >= self.deadline:
            self.result[key] = {"status": f"skipped: the suite's budget of {self.sizes.total_budget_s:.0f} s is spent"}
        else:
            print(f"[{t0 - self.start:6.1f} s] {key} ...", flush=True)
            try:
                self.result[key] = fn()
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
                traceback.print_exc()
                self.result[key] = {"status": f"error: {type(exc).__name__}: {exc}"[:2000]}
            self.result[key]["seconds_section"] = round(time.perf_counter() - t0, 2)
        print(f"[{time.perf_counter() - self.start:6.1f} s] {key}: {json.dumps(self.result[key], default=str)[:600]}",
              flush=True)
        self.write()


def backend(sizes: Sizes, timing: tuple[int, int, int], cudnn_benchmark: bool = True) -> Any:
    from gpunet.latency import get_backend

    runs, warmup, rounds = timing
    options: dict[str, Any] = {"device": sizes.device, "precision": sizes.precision, "runs": runs, "warmup": warmup,
                               "rounds": rounds, "cudnn_benchmark": cudnn_benchmark}
    if sizes.device == "cpu":
        options["threads"] = 1
    return get_backend("torch", **options)


def precisions(sizes: Sizes) -> dict[str, Any]:
    """The two AMP modes compared: the policy's own choice on CUDA; on the CPU, CPU autocast in the same dtypes."""
    import torch

    from gpunet.train import Precision, precision_policy

    if sizes.device == "cuda":
        return {name: precision_policy("cuda", amp=True, amp_dtype=dtype, channels_last=True)
                for name, dtype in (("bf16", "bfloat16"), ("fp16", "float16"))}
    return {"bf16": Precision("cpu", torch.bfloat16, True), "fp16": Precision("cpu", torch.float16, True)}


def candidate(sizes: Sizes) -> tuple[Any, Any, list[int]]:
    """The GPUNet-1-sized candidate: NVIDIA's GPUNet-1 moved into the preset's space (RGB input, as the synthetic
    ImageNet-shaped data) at the training resolution. Returns ``(space, architecture, vector)``."""
    from gpu.training import nearest_in_space

    from gpunet.archs import released_path
    from gpunet.nvidia import load_architecture
    from gpunet.space import load_space

    space = load_space({"preset": sizes.preset, "inChans": 3})
    gpunet1 = dataclasses.replace(load_architecture(released_path("gpunet-1")), resolution=sizes.train_resolution)
    vector = nearest_in_space(space, gpunet1)
    return space, space.decode(vector), vector


def training_section(suite: Suite) -> dict[str, Any]:
    import torch

    from gpu.training import SyntheticImages, candidate_stats, throughput

    from gpunet.spec import parse_training

    sizes = suite.sizes
    deadline = suite.section_deadline("training")
    _, arch, vector = candidate(sizes)
    training = parse_training({"batchSize": sizes.train_batch, "epochs": 2, "recipe": {"workers": sizes.train_workers}})
    data = (SyntheticImages(sizes.train_batch * sizes.train_steps, arch.resolution, seed=1),
            SyntheticImages(sizes.train_batch * max(1, sizes.train_steps // 4), arch.resolution, seed=2), 1000)
    out: dict[str, Any] = {"candidate": {**candidate_stats(arch), "vector": vector}, "batch_size": sizes.train_batch,
                           "images_per_epoch": len(data[0]), "epochs": 2}
    device = torch.device(sizes.device)
    spent = 0.0
    for name, precision in precisions(sizes).items():
        if time.perf_counter() + spent > deadline:
            out[name] = {"status": "skipped: time guard"}
            continue
        t0 = time.perf_counter()
        out[name] = throughput(arch, training, data, precision, device, epochs=2)
        spent = time.perf_counter() - t0
    done = [out[n] for n in ("bf16", "fp16") if "images_per_s" in out[n]]
    if done:
        best = max(done, key=lambda r: r["images_per_s"])
        out.update(throughput_ratio=best["throughput_ratio"], best=best["precision"])
    out["status"] = "ok" if len(done) == 2 else f"partial: {len(done)} of 2 AMP modes"
    return out


def trainer_section(suite: Suite) -> dict[str, Any]:
    from gpu.training import pinned_space, trainer_end_to_end, write_image_folder

    from gpunet.spec import API_VERSION, KIND

    sizes = suite.sizes
    deadline = suite.section_deadline("trainer")
    space, _, vector = candidate(sizes)
    classes, per_class, val_per_class, side = sizes.trainer_images
    work = Path(suite.args.keep_run) if suite.args.keep_run else Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    t0 = time.perf_counter()
    # train/ holds the training images and the validation split held out of them; val/ is the test split, which
    # training never reads, so one image per class is enough there
    images = write_image_folder(work / "imagefolder", classes, per_class + val_per_class, 1, side, SEED,
                                processes=sizes.write_processes)
    write_s = time.perf_counter() - t0
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "gpu-suite-trainer"}, "spec": {
        "searchSpace": pinned_space(sizes.preset, space, vector),
        # one candidate: a tier of 0.01-2000 ms holds it whatever the profiler measures on a loaded machine
        "latency": {"backend": "torch", "device": sizes.device, "precision": sizes.precision, "tiers": [1000.0],
                    "tolerance": 0.99999, "samples": 16},
        "algorithm": {"name": "random", "seed": SEED, "budget": 1, "initialSamples": 1},
        "training": {"dataset": {"kind": "imagefolder", "path": str(work / "imagefolder"),
                                 "valSplit": classes * val_per_class}, "epochs": 2,
                     "batchSize": sizes.trainer_batch, "recipe": {"workers": sizes.trainer_workers},
                     "earlyStopping": {"enabled": False}, "maxRetries": 0},
    }}
    result = trainer_end_to_end(doc, work / "run", max(10.0, deadline - time.perf_counter()), sizes.profiler_runs)
    return {"images": {"classes": classes, "train": classes * per_class, "val": classes * val_per_class, "test": classes,
                       "side_px": side, "written": images, "write_s": round(write_s, 2)},
            "batch_size": sizes.trainer_batch, "run_dir": str(work / "run"), **result}


def run_suite(args: argparse.Namespace) -> int:
    import torch

    from gpu import latency

    from gpunet.latency import LatencyTable

    sizes = SMOKE if args.smoke else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: error: device: got no CUDA GPU; run with --smoke on a CPU", file=sys.stderr)
        return 2
    if args.budget_s:
        sizes = dataclasses.replace(sizes, total_budget_s=args.budget_s)
    if sizes.device == "cpu":
        torch.set_num_threads(1)
    # the trainer and profiler processes import this tree's gpunet and gpunet_worker, installed or not
    paths = [str(ROOT), str(ROOT / "worker"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    suite = Suite(args, sizes, Path(args.out))
    with tempfile.TemporaryDirectory() as tmp:
        table = LatencyTable(args.table or Path(tmp) / "latency.sqlite")
        layers = backend(sizes, sizes.layer_timing, sizes.cudnn_benchmark)
        networks = backend(sizes, sizes.network_timing, sizes.cudnn_benchmark)
        state: dict[str, Any] = {"calibration": None, "layers_per_minute": None}

        def fidelity() -> dict[str, Any]:
            out, state["calibration"] = latency.fidelity(
                layers, networks, table, sizes.preset, sizes.networks, SEED,
                suite.section_deadline("fidelity_table"), suite.section_deadline("fidelity_table", "fidelity_e2e"))
            state["layers_per_minute"] = out.get("layers_per_minute")
            return {**out, "cudnn_benchmark": sizes.cudnn_benchmark}

        suite.run("fidelity", fidelity)
        suite.run("gpunets", lambda: latency.released(backend(sizes, sizes.released_timing)))
        measured = [v["latency_ms"] for v in suite.result["gpunets"].values() if isinstance(v, dict) and "latency_ms" in v]
        suite.run("sampling", lambda: latency.sampling(table, layers, sizes.preset, sizes.samples, SEED,
                                                        state["calibration"], measured or DEFAULT_TIERS_MS,
                                                        state["layers_per_minute"]))
        suite.run("training", lambda: training_section(suite))
        suite.run("trainer", lambda: trainer_section(suite))
        suite.result["meta"]["graph_fallbacks"] = sum(getattr(b, "graph_fallbacks", 0) for b in (layers, networks))
        table.close()
    suite.write()
    statuses = {k: v.get("status") for k, v in suite.result.items() if k != "meta"}
    print(f"gpu_suite: wrote {args.out} in {suite.result['meta']['wall_s']} s; {statuses}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="the CPU run: torch CPU backend, gpunet-tiny, tiny sizes")
    parser.add_argument("--budget-s", type=float, default=None, help="overall time budget in s (default: per mode)")
    parser.add_argument("--table", type=Path, default=None, help="keep the latency table here (SQLite)")
    parser.add_argument("--keep-run", type=Path, default=None, help="keep the trainer run (logs, ImageFolder) here")
    return run_suite(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
