"""Training sections of the GPU suite.

- :func:`throughput`: images/s of :func:`gpunet.train.train_candidate` with one :class:`~gpunet.train.Precision`
  (AMP dtype, channels_last) against :func:`plain_timm_loop`, the loop a timm user writes (timm's ``train.py``
  with ``--amp --amp-dtype D --channels-last``), on the same model and the same synthetic data; peak GPU memory.
- :func:`trainer_end_to_end`: the real ``gpunet_worker`` trainer and profiler processes against a local controller
  (:class:`gpunet.controller.local.LocalRun`, what ``gpunet run`` uses) on an ImageNet-shaped ImageFolder written
  on the fly (:func:`write_image_folder`): epoch time and checkpoint cost, read from the trainer's epoch log lines.

The candidate is :func:`nearest_in_space` of NVIDIA's GPUNet-1 (whose stage-5 filters lie outside Table 1's space):
a GPUNet-1-sized network of the search space.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gpunet.arch import ACTIVATIONS, Architecture
from gpunet.model import build_model, model_stats
from gpunet.space import SearchSpace
from gpunet.spec import TrainingSpec
from gpunet.train import CONTINUE, EpochReport, Precision, recipe_architecture, train_candidate

#: ImageNet-1k's training images: an epoch of them at a measured rate gives the checkpoint share of a real epoch.
IMAGENET_TRAIN_IMAGES = 1_281_167
#: Reads :data:`gpunet_worker.trainer.EPOCH_LOG` lines back: epoch, top-1, images/s, epoch s, checkpoint s.
EPOCH_LINE = re.compile(r" epoch (\d+): top-1 ([\d.]+), (\d+) images/s, epoch ([\d.]+) s, checkpoint ([\d.]+) s")


class SyntheticImages(torch.utils.data.Dataset):
    """``count`` ImageNet-shaped samples: normalised ``3 x R x R`` float tensors and labels in ``[0, num_classes)``.

    The images are ``pool`` random tensors drawn once and reused (sample ``i`` is image ``i % pool``), so serving
    one costs a tensor view: the GPU, not the data pipeline, sets the pace.
    """

    def __init__(self, count: int, resolution: int, num_classes: int = 1000, pool: int = 256, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(min(pool, count), 3, resolution, resolution, generator=g)
        self.labels = torch.randint(0, num_classes, (count,), generator=g)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i % len(self.images)], int(self.labels[i])


def nearest_in_space(space: SearchSpace, arch: Architecture) -> list[int]:
    """The vector of ``space`` nearest to ``arch``, digit by digit (each field's closest allowed value)."""
    vector = []
    for d in space.digits:
        if d.stage is None:
            raw = arch.resolution
        else:
            value = getattr(arch.stages[d.stage], d.attr)
            raw = ACTIVATIONS.index(value) if d.attr == "act" else int(value)
        vector.append(min(d.values, key=lambda v: (abs(v - raw), v)))
    return vector


def pinned_space(preset: str, space: SearchSpace, vector: list[int]) -> dict[str, Any]:
    """A ``spec.searchSpace`` override of ``preset`` whose only network is ``vector``."""
    stages: dict[int, dict[str, list[Any]]] = {}
    resolution = vector[0]
    for d, value in zip(space.digits, vector):
        if d.stage is not None:
            stages.setdefault(d.stage, {})[d.attr] = [ACTIVATIONS[value] if d.attr == "act" else value]
    return {"preset": preset, "inChans": space.in_chans, "resolution": [resolution], "stages": stages}


def peak_memory_mib(device: torch.device, cuda: Any = None) -> float | None:
    """Peak GPU memory allocated by tensors since the last reset, in MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    cuda = cuda if cuda is not None else torch.cuda
    return cuda.max_memory_allocated(device) / 2**20


def reset_peak_memory(device: torch.device, cuda: Any = None) -> None:
    if device.type == "cuda":
        cuda = cuda if cuda is not None else torch.cuda
        cuda.synchronize(device)
        cuda.empty_cache()
        cuda.reset_peak_memory_stats(device)


def plain_timm_loop(arch: Architecture, training: TrainingSpec, train_ds: Any, num_classes: int, amp_dtype: Any,
                    channels_last: bool, device: torch.device, epochs: int) -> float:
    """images/s of the last epoch of a plain timm training loop (forward under autocast, loss, backward with a
    GradScaler for float16, step, EMA update), with the recipe's timm optimizer and ``ModelEmaV3``."""
    import contextlib

    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    r = training.recipe
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's train.py
    model = build_model(recipe_architecture(arch, training, num_classes)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=r.optimizer, lr=r.lr, weight_decay=r.weight_decay, momentum=r.momentum,
                                    eps=r.opt_eps)
    ema = ModelEmaV3(model, decay=r.ema, use_warmup=True, device=device) if r.ema else None
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    rate, step = 0.0, 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        loader = torch.utils.data.DataLoader(train_ds, batch_size=training.batch_size, shuffle=True,
                                             drop_last=len(train_ds) > training.batch_size, num_workers=r.workers,
                                             pin_memory=device.type == "cuda",
                                             generator=torch.Generator().manual_seed(epoch))
        model.train()
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
            with amp:
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            seen += y.numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = seen / (time.perf_counter() - t0)
    return rate


def throughput(arch: Architecture, training: TrainingSpec, datasets: tuple[Any, Any, int], precision: Precision,
               device: torch.device, epochs: int) -> dict[str, Any]:
    """Our trainer and the plain timm loop with ``precision``, ``epochs`` each (the last epoch's images/s counts,
    so the first one's cuDNN autotuning and allocations stay out); the plain loop runs first."""
    reset_peak_memory(device)
    timm_rate = plain_timm_loop(arch, training, datasets[0], datasets[2], precision.amp_dtype,
                                precision.channels_last, device, epochs)
    timm_peak = peak_memory_mib(device)
    reset_peak_memory(device)
    reports: list[EpochReport] = []
    with tempfile.TemporaryDirectory() as tmp:
        training = dataclasses.replace(training, epochs=epochs)
        train_candidate(arch, training, Path(tmp) / "c.pt", device=str(device), datasets=datasets, precision=precision,
                        on_epoch=lambda rep: reports.append(rep) or CONTINUE)
    ours = reports[-1].images_per_s
    return {"precision": precision.describe(), "images_per_s": ours, "images_per_s_timm": timm_rate,
            "throughput_ratio": ours / timm_rate, "peak_mem_mib": peak_memory_mib(device), "peak_mem_mib_timm": timm_peak,
            "checkpoint_s": reports[-1].checkpoint_s, "status": "ok"}


def candidate_stats(arch: Architecture) -> dict[str, Any]:
    stats = model_stats(arch)
    return {"resolution": arch.resolution, "params_m": round(stats.params_m, 2), "gflops": round(stats.gflops, 2)}


# ---------------------------------------------------------------------------------------------------
# The trainer worker end to end
# ---------------------------------------------------------------------------------------------------

def _write_class(args: tuple[Path, int, int, int, int]) -> int:
    from PIL import Image

    folder, label, count, size, seed = args
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed * 100_003 + label)
    for i in range(count):
        w, h = (int(v) for v in rng.integers(size, size * 3 // 2 + 1, 2))
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth content: small files, cheap to decode
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
    return count


def write_image_folder(root: Path, classes: int, per_class: int, val_per_class: int, size: int, seed: int = 0,
                       processes: int = 1) -> int:
    """Write an ImageNet-layout folder (``root/{train,val}/<class>/*.jpg``) of RGB JPEGs ``size``-``1.5 size`` px
    on a side; returns the number of images written."""
    jobs = [(root / split / f"n{c:08d}", c, count, size, seed + k)
            for k, (split, count) in enumerate((("train", per_class), ("val", val_per_class))) for c in range(classes)]
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            return sum(pool.map(_write_class, jobs))
    return sum(map(_write_class, jobs))


def parse_epochs(log_text: str) -> list[dict[str, float]]:
    """The epoch lines of a trainer log as ``[{"epoch", "top1", "images_per_s", "epoch_s", "checkpoint_s"}]``."""
    return [{"epoch": int(m[1]), "top1": float(m[2]), "images_per_s": float(m[3]), "epoch_s": float(m[4]),
             "checkpoint_s": float(m[5])} for m in EPOCH_LINE.finditer(log_text)]


def trainer_end_to_end(doc: dict[str, Any], run_dir: Path, timeout_s: float, profiler_runs: int) -> dict[str, Any]:
    """Run the one-candidate search ``doc`` with one trainer and one profiler process until it ends or ``timeout_s``.

    Returns the epochs the trainer logged, ``epoch_s`` and ``checkpoint_share`` of its last epoch, and the share a
    checkpoint would take of an ImageNet-1k epoch at the trainer's measured rate.
    """
    from gpunet.controller.local import LocalRun
    from gpunet.rpc import phase_name
    from gpunet.spec import load_spec

    started = time.perf_counter()
    run = LocalRun(load_spec(doc), run_dir, workers=1, profilers=1, lease_s=120.0, profiler_runs=profiler_runs)
    try:
        run.start()
        status = run.wait(timeout_s=timeout_s)
    finally:
        run.close()
    wall = time.perf_counter() - started
    epochs = parse_epochs((run_dir / "logs" / "local-trainer-0.log").read_text())
    phase = phase_name(status.phase)
    result: dict[str, Any] = {"phase": phase, "wall_s": wall, "epochs": epochs,
                              "status": "ok" if phase == "Succeeded" and len(epochs) == doc["spec"]["training"]["epochs"]
                              else f"partial: phase {phase} after {wall:.0f} s, {len(epochs)} epochs logged"}
    if not epochs:
        return result
    last = epochs[-1]
    checkpoints = sorted(run_dir.rglob("*.pt"))
    imagenet_epoch_s = IMAGENET_TRAIN_IMAGES / last["images_per_s"] + last["checkpoint_s"]
    result.update(epoch_s=last["epoch_s"], checkpoint_s=last["checkpoint_s"],
                  checkpoint_share=last["checkpoint_s"] / last["epoch_s"], images_per_s=last["images_per_s"],
                  checkpoint_mb=round(checkpoints[0].stat().st_size / 1e6, 1) if checkpoints else None,
                  checkpoint_share_imagenet_epoch=last["checkpoint_s"] / imagenet_epoch_s)
    return result
