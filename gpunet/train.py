"""Training of one candidate network with a timm recipe, resumable from per-epoch checkpoints.

The recipe is :class:`gpunet.spec.RecipeSpec` (defaults: the GPUNet paper's supplement Table 5): timm's
``create_optimizer_v2`` (RMSprop-TF, lr 0.06, eps 1e-3, weight decay 1e-5) and ``create_scheduler_v2`` (step
decay 0.97 every 2.4 epochs, warmup), ``ModelEmaV3`` weight averaging (decay 0.9999, with timm's warmup of the
decay so that short runs still get useful averages), dropout / drop-connect from the recipe, AMP on CUDA.

After every epoch the trainer evaluates top-1 on the validation split and writes a checkpoint atomically
(temporary file, fsync, rename) before telling the caller, so a report always points at a complete file.
A checkpoint that cannot be read (corrupt, another architecture) makes training restart from scratch, and the
outcome records why.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .arch import Architecture
from .data import build_datasets
from .fileio import write_atomic
from .model import build_model
from .rpc import pb
from .spec import TrainingSpec

CHECKPOINT_FORMAT = "gpunet-train-checkpoint/v1"
#: What ``on_epoch`` may answer: the controller's ``pb.ProgressAction`` values, so a trainer passes its answer through.
CONTINUE, STOP, ABANDON = pb.PROGRESS_ACTION_CONTINUE, pb.PROGRESS_ACTION_STOP, pb.PROGRESS_ACTION_ABANDON


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (unreadable, truncated, another format or architecture)."""


@dataclass
class EpochReport:
    """One finished epoch. ``epoch`` counts completed epochs (1 after the first); ``top1`` is a fraction (the better
    of the raw and the EMA weights when EMA is on)."""

    epoch: int
    top1: float
    train_loss: float
    epoch_s: float
    images_per_s: float
    checkpoint_path: str
    #: Seconds spent writing this epoch's checkpoint (included in ``epoch_s``).
    checkpoint_s: float = 0.0


@dataclass
class TrainOutcome:
    """How training ended: ``status`` is ``completed`` (all epochs), ``stopped`` (early stopping),
    ``interrupted`` (``should_stop`` became true: preemption) or ``abandoned`` (the lease is gone)."""

    status: str
    epochs: int
    best_top1: float
    train_s: float
    checkpoint_path: str
    restarted_from_scratch: bool = False
    restart_reason: str = ""
    history: list[float] = field(default_factory=list)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically (see :func:`gpunet.fileio.write_atomic`)."""
    return write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, arch: Architecture) -> dict[str, Any]:
    """Read a training checkpoint of ``arch``; raises :class:`CheckpointError` saying what is wrong."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such file") from exc
    except Exception as exc:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    if state.get("arch") != arch.to_dict():
        raise CheckpointError(f"{path}: checkpoint of another architecture")
    return state


def recipe_architecture(arch: Architecture, training: TrainingSpec, num_classes: int) -> Architecture:
    """``arch`` with the recipe's dropout and drop-connect rates and the dataset's number of classes."""
    return dataclasses.replace(arch, dropout=training.recipe.drop_rate, drop_path_rate=training.recipe.drop_path_rate,
                               num_classes=num_classes)


def make_optimizer_and_scheduler(model: nn.Module, training: TrainingSpec) -> tuple[torch.optim.Optimizer, Any]:
    """timm optimizer and (epoch-stepped) scheduler of the recipe."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    r = training.recipe
    kwargs: dict[str, Any] = {"eps": r.opt_eps} if r.optimizer.lower() in {"rmsproptf", "rmsprop", "adam", "adamw"} else {}
    optimizer = create_optimizer_v2(model, opt=r.optimizer, lr=r.lr, weight_decay=r.weight_decay, momentum=r.momentum, **kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=r.sched, num_epochs=training.epochs, decay_epochs=r.decay_epochs, decay_rate=r.decay_rate,
        warmup_lr=r.warmup_lr, warmup_epochs=int(math.ceil(r.warmup_epochs)),
    )
    return optimizer, scheduler


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device) -> float:
    """Top-1 accuracy (a fraction) of ``model`` over ``loader``."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device, non_blocking=True))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += int(labels.numel())
    return correct / max(total, 1)


def train_candidate(
    arch: Architecture,
    training: TrainingSpec,
    checkpoint_path: str | Path,
    resume_checkpoint: str | Path | None = None,
    device: str = "cpu",
    on_epoch: Callable[[EpochReport], int] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
    datasets: tuple[Any, Any, int] | None = None,
) -> TrainOutcome:
    """Train ``arch`` for ``training.epochs`` epochs, resuming from ``resume_checkpoint`` when it is usable.

    Args:
        on_epoch: called after each epoch's checkpoint is written; answers :data:`CONTINUE`, :data:`STOP`
            (early stopping) or :data:`ABANDON`.
        should_stop: polled between batches; when true, training stops at once (the last epoch checkpoint stays
            the resume point) and the outcome is ``interrupted``.
        datasets: ``(train, val, num_classes)`` to reuse; default :func:`gpunet.data.build_datasets`.
    """
    start = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(seed)
    train_ds, val_ds, num_classes = datasets or build_datasets(training.dataset, training.recipe, arch.resolution, arch.in_chans, seed)
    arch = recipe_architecture(arch, training, num_classes)
    model = build_model(arch).to(dev)
    optimizer, scheduler = make_optimizer_and_scheduler(model, training)
    ema = None
    if training.recipe.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=training.recipe.ema, use_warmup=True, device=dev)
    use_amp = training.recipe.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=training.recipe.label_smoothing)

    epoch, best, history, step = 0, 0.0, [], 0
    restarted, reason = False, ""
    if resume_checkpoint:
        try:
            state = load_checkpoint(resume_checkpoint, arch)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None and state.get("ema") is not None:
                ema.module.load_state_dict(state["ema"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            epoch, best, history, step = int(state["epoch"]), float(state["best_top1"]), list(state["history"]), int(state.get("step", 0))
        except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
            restarted, reason = True, str(exc)
            torch.manual_seed(seed)
            model = build_model(arch).to(dev)
            optimizer, scheduler = make_optimizer_and_scheduler(model, training)
            if ema is not None:
                from timm.utils import ModelEmaV3

                ema = ModelEmaV3(model, decay=training.recipe.ema, use_warmup=True, device=dev)
    scheduler.step(epoch)

    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=max(256, training.batch_size), shuffle=False,
                                             num_workers=training.recipe.workers)

    def outcome(status: str) -> TrainOutcome:
        return TrainOutcome(status, epoch, best, time.perf_counter() - start, str(checkpoint_path) if epoch else "",
                            restarted, reason, history)

    while epoch < training.epochs:
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=training.batch_size, shuffle=True, drop_last=len(train_ds) > training.batch_size,
                                             num_workers=training.recipe.workers, generator=generator)
        model.train()
        loss_sum, seen = 0.0, 0
        for images, labels in loader:
            if should_stop is not None and should_stop():
                return outcome("interrupted")
            images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(images), labels)
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
            loss_sum += float(loss.detach()) * labels.numel()
            seen += labels.numel()
        train_s = time.perf_counter() - t0
        epoch += 1
        scheduler.step(epoch)
        top1 = evaluate(model, val_loader, dev)
        ema_better = False
        if ema is not None:
            top1_ema = evaluate(ema.module, val_loader, dev)
            ema_better = top1_ema > top1
            top1 = max(top1, top1_ema)
        history.append(top1)
        best = max(best, top1)
        t_ckpt = time.perf_counter()
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "arch": arch.to_dict(), "epoch": epoch, "step": step, "best_top1": best,
            "history": history, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None, "ema_better": ema_better,
        })
        checkpoint_s = time.perf_counter() - t_ckpt
        report = EpochReport(epoch, top1, loss_sum / max(seen, 1), time.perf_counter() - t0, seen / max(train_s, 1e-9),
                             str(checkpoint_path), checkpoint_s)
        answer = on_epoch(report) if on_epoch is not None else CONTINUE
        if answer == STOP and epoch < training.epochs:
            return outcome("stopped")
        if answer == ABANDON:
            return outcome("abandoned")
    return outcome("completed")
