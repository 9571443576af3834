"""Training of one candidate network with a timm recipe, resumable from per-epoch checkpoints.

The recipe is :class:`gpunet.spec.RecipeSpec` (defaults: the GPUNet paper's supplement Table 5): timm's
``create_optimizer_v2`` (RMSprop-TF, lr 0.06, eps 1e-3, weight decay 1e-5) and ``create_scheduler_v2`` (step
decay 0.97 every 2.4 epochs, warmup), ``ModelEmaV3`` weight averaging (decay 0.9999, with timm's warmup of the
decay so that short runs still get useful averages), dropout / drop-connect from the recipe.

Precision (:func:`precision_policy`): on CUDA, automatic mixed precision (``torch.autocast``; bfloat16 on GPUs of
compute capability 8.0 and later, else float16 with a ``GradScaler``) and channels_last memory format; on the CPU,
FP32 in NCHW. Pass a :class:`Precision` to :func:`train_candidate` to choose otherwise (e.g. to compare both AMP
dtypes, as ``benchmarks/gpu_suite.py`` does).

After every epoch the trainer evaluates top-1 on the validation split (held out of the training images,
:func:`gpunet.data.build_datasets`) and writes a checkpoint atomically
(temporary file, fsync, rename) before telling the caller, so a report always points at a complete file.
A checkpoint that cannot be read (corrupt, another architecture) makes training restart from scratch, and the
outcome records why.

The test split is not seen during training: :func:`evaluate_on_test` scores a finished checkpoint on it once, for
the final models of the hub.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .arch import Architecture
from .data import build_datasets, build_test_dataset
from .errors import GpunetError
from .fileio import write_atomic
from .model import build_model
from .rpc import pb
from .spec import TrainingSpec

CHECKPOINT_FORMAT = "gpunet-train-checkpoint/v1"
#: What ``on_epoch`` may answer: the controller's ``pb.ProgressAction`` values, so a trainer passes its answer through.
CONTINUE, STOP, ABANDON = pb.PROGRESS_ACTION_CONTINUE, pb.PROGRESS_ACTION_STOP, pb.PROGRESS_ACTION_ABANDON


#: AMP dtypes by name: bfloat16 needs no loss scaling; float16 needs a GradScaler.
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICES = "auto, cpu, cuda or cuda:<index>"


class DeviceError(GpunetError, ValueError):
    """A training device or precision that this process cannot use (an unknown name, CUDA without a GPU)."""


@dataclass(frozen=True)
class Precision:
    """How training steps run on one device type.

    Attributes:
        device_type: ``"cuda"`` or ``"cpu"`` (what ``torch.autocast`` and ``GradScaler`` are made for).
        amp_dtype: the autocast dtype (``torch.bfloat16`` or ``torch.float16``), or None for plain FP32.
        channels_last: models and ``N x C x H x W`` image batches in channels_last (NHWC) memory format, the layout
            cuDNN's tensor-core convolutions prefer.
    """

    device_type: str
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def grad_scaler(self) -> bool:
        """Loss scaling is needed with float16 only (bfloat16 has float32's exponent range)."""
        return self.amp_dtype == torch.float16

    def autocast(self) -> Any:
        """The autocast context of one forward pass (disabled without an AMP dtype)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def scaler(self) -> "torch.amp.GradScaler | None":
        """A fresh ``GradScaler`` for float16, else None."""
        return torch.amp.GradScaler(self.device_type) if self.grad_scaler else None

    def model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def describe(self) -> str:
        dtype = str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype is not None else "fp32"
        return f"{self.device_type} {dtype}{' + GradScaler' if self.grad_scaler else ''}{', channels_last' if self.channels_last else ''}"


def precision_policy(device: str | torch.device, amp: bool = True, amp_dtype: str = "auto",
                     channels_last: bool | None = None, cuda: Any = None) -> Precision:
    """The precision a recipe trains with on ``device``: AMP and channels_last on CUDA, FP32 and NCHW on the CPU.

    Args:
        amp: the recipe's AMP switch (``spec.training.recipe.amp``); used on CUDA only.
        amp_dtype: ``"auto"`` (bfloat16 on compute capability >= 8.0, i.e. Ampere, Hopper and later; float16
            before), ``"bfloat16"`` or ``"float16"``.
        channels_last: None for the device's default (on for CUDA, off for the CPU).
        cuda: the ``torch.cuda`` module (a stand-in in tests).

    Raises:
        DeviceError: an unknown ``amp_dtype``.
    """
    if amp_dtype != "auto" and amp_dtype not in AMP_DTYPES:
        raise DeviceError("amp_dtype", amp_dtype, ("auto", *AMP_DTYPES))
    dev = torch.device(device)
    if dev.type != "cuda":
        return Precision(dev.type, None, bool(channels_last))
    cuda = cuda if cuda is not None else torch.cuda
    dtype = None
    if amp:
        if amp_dtype == "auto":
            amp_dtype = "bfloat16" if tuple(cuda.get_device_capability(dev)) >= (8, 0) else "float16"
        dtype = AMP_DTYPES[amp_dtype]
    return Precision("cuda", dtype, True if channels_last is None else channels_last)


def resolve_device(name: str, cuda: Any = None) -> str:
    """The training device for ``name``: ``"auto"`` is ``"cuda"`` when torch sees a GPU, else ``"cpu"``.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>`` (``--device`` / ``GPUNET_DEVICE`` of a trainer).
        cuda: the ``torch.cuda`` module (a stand-in in tests).

    Raises:
        DeviceError: an unknown device, CUDA asked for where torch sees no GPU, or a GPU index it does not have.
    """
    cuda = cuda if cuda is not None else torch.cuda
    if name == "auto":
        return "cuda" if cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError("device", name, _DEVICES) from None
    if dev.type == "cpu":
        return name
    if dev.type != "cuda":
        raise DeviceError("device", name, _DEVICES)
    if not cuda.is_available():
        missing = "sees no GPU" if torch.version.cuda else "is not a CUDA build"
        raise DeviceError("device", name, "cpu or auto", reason=f"torch {torch.__version__} {missing}")
    if dev.index is not None and dev.index >= cuda.device_count():
        raise DeviceError("device", name, f"a GPU index below {cuda.device_count()}")
    return name


class CheckpointError(GpunetError, RuntimeError):
    """A checkpoint that cannot be used (unreadable, truncated, another format or architecture); the field is the
    checkpoint's path."""


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
    """Read a training checkpoint of ``arch`` with ``torch.load(weights_only=True)`` (tensors and plain containers
    only: a checkpoint on the shared volume is never unpickled); raises :class:`CheckpointError` saying what is wrong."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(str(path), reason="no such file") from exc
    except Exception as exc:  # torch raises many kinds for a corrupt file
        raise CheckpointError(str(path), reason=f"unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: format", found, repr(CHECKPOINT_FORMAT))
    if state.get("arch") != arch.to_dict():
        raise CheckpointError(str(path), reason="checkpoint of another architecture")
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
def evaluate(model: nn.Module, loader: Any, device: torch.device, precision: Precision | None = None) -> float:
    """Top-1 accuracy (a fraction) of ``model`` over ``loader`` (with ``precision``'s autocast and memory format)."""
    precision = precision or Precision(torch.device(device).type)
    model.eval()
    correct, total = torch.zeros((), dtype=torch.int64, device=device), 0
    for images, labels in loader:
        with precision.autocast():
            logits = model(precision.images(images.to(device, non_blocking=True)))
        correct += (logits.argmax(1) == labels.to(device, non_blocking=True)).sum()
        total += int(labels.numel())
    return int(correct) / max(total, 1)


def test_top1(checkpoint_path: str | Path, training: TrainingSpec, device: str = "cpu", seed: int = 0,
              dataset: Any = None) -> float:
    """Top-1 (a fraction) on the test split (:func:`gpunet.data.build_test_dataset`, or ``dataset``) of the network
    in a training checkpoint: its EMA weights when they scored the higher validation top-1 in the last epoch, else
    its raw weights (as the hub's weights files); evaluated in FP32 by :func:`top1_on_test`. ``seed`` is unused:
    the split is seeded by ``training.dataset.seed``.

    The checkpoint is read with ``weights_only=True``; its ``arch`` is our architecture JSON or a baseline's
    (:func:`gpunet.baselines.network_from_dict`). Raises :class:`CheckpointError` for an unreadable file.
    """
    from .baselines import network_from_dict

    try:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        arch = network_from_dict(state["arch"])
        model = build_model(arch)
        use_ema = state.get("ema") is not None and bool(state.get("ema_better", False))
        model.load_state_dict(state["ema"] if use_ema else state["model"])
    except FileNotFoundError as exc:
        raise CheckpointError(str(checkpoint_path), reason="no such file") from exc
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(str(checkpoint_path), reason=f"unusable ({type(exc).__name__}: {exc})") from exc
    if dataset is None:
        dataset = build_test_dataset(training.dataset, training.recipe, arch.resolution, arch.in_chans)[0]
    return top1_on_test(model, training, arch.resolution, arch.in_chans, device, Precision(torch.device(device).type),
                        (dataset, 0))


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
    precision: Precision | None = None,
    may_write: Callable[[], bool] | None = None,
) -> TrainOutcome:
    """Train ``arch`` for ``training.epochs`` epochs, resuming from ``resume_checkpoint`` when it is usable.

    Args:
        on_epoch: called after each epoch's checkpoint is written; answers :data:`CONTINUE`, :data:`STOP`
            (early stopping) or :data:`ABANDON`.
        should_stop: polled between batches; when true, training stops at once (the last epoch checkpoint stays
            the resume point) and the outcome is ``interrupted``.
        seed: seed of the weights' initialisation and of the batch order (the splits are ``dataset.seed``'s).
        datasets: ``(train, val, num_classes)`` to reuse; default :func:`gpunet.data.build_datasets`.
        precision: AMP dtype and memory format; default :func:`precision_policy` of ``device`` and the recipe.
        may_write: asked right before each epoch checkpoint is written; when false (the worker's lease is gone),
            nothing is written and the outcome is ``abandoned``.
    """
    start = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(seed)
    train_ds, val_ds, num_classes = datasets or build_datasets(training.dataset, training.recipe, arch.resolution, arch.in_chans)
    arch = recipe_architecture(arch, training, num_classes)
    precision = precision or precision_policy(dev, training.recipe.amp)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN autotunes each convolution once (timm's train.py)
    model = precision.model(build_model(arch).to(dev))
    optimizer, scheduler = make_optimizer_and_scheduler(model, training)
    ema = None
    if training.recipe.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=training.recipe.ema, use_warmup=True, device=dev)
    scaler = precision.scaler()
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
            model = precision.model(build_model(arch).to(dev))
            optimizer, scheduler = make_optimizer_and_scheduler(model, training)
            if ema is not None:
                from timm.utils import ModelEmaV3

                ema = ModelEmaV3(model, decay=training.recipe.ema, use_warmup=True, device=dev)
    scheduler.step(epoch)

    pin = dev.type == "cuda"  # page-locked batches: the copies to the GPU overlap with compute
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=max(256, training.batch_size), shuffle=False,
                                             num_workers=training.recipe.workers, pin_memory=pin)

    def outcome(status: str) -> TrainOutcome:
        return TrainOutcome(status, epoch, best, time.perf_counter() - start, str(checkpoint_path) if epoch else "",
                            restarted, reason, history)

    while epoch < training.epochs:
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        # timm's RandomErasing draws from Python's random (in this process with recipe.workers 0; DataLoader
        # workers seed their own from the generator): seeded per epoch, so that a run, and a resumed one, repeats.
        random.seed(seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=training.batch_size, shuffle=True, drop_last=len(train_ds) > training.batch_size,
                                             num_workers=training.recipe.workers, generator=generator, pin_memory=pin)
        model.train()
        loss_sum, seen = torch.zeros((), device=dev), 0  # summed on the device: no GPU sync per step
        for images, labels in loader:
            if should_stop is not None and should_stop():
                return outcome("interrupted")
            images, labels = precision.images(images.to(dev, non_blocking=True)), labels.to(dev, non_blocking=True)
            with precision.autocast():
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
            loss_sum += loss.detach() * labels.numel()
            seen += labels.numel()
        train_loss = float(loss_sum) / max(seen, 1)  # waits for the GPU, so train_s covers its work
        train_s = time.perf_counter() - t0
        epoch += 1
        scheduler.step(epoch)
        top1 = evaluate(model, val_loader, dev, precision)
        ema_better = False
        if ema is not None:
            top1_ema = evaluate(ema.module, val_loader, dev, precision)
            ema_better = top1_ema > top1
            top1 = max(top1, top1_ema)
        history.append(top1)
        best = max(best, top1)
        if may_write is not None and not may_write():
            epoch -= 1  # not saved: the last checkpoint written stays the resume point
            return outcome("abandoned")
        t_ckpt = time.perf_counter()
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "arch": arch.to_dict(), "epoch": epoch, "step": step, "best_top1": best,
            "history": history, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None, "ema_better": ema_better,
        })
        checkpoint_s = time.perf_counter() - t_ckpt
        report = EpochReport(epoch, top1, train_loss, time.perf_counter() - t0, seen / max(train_s, 1e-9),
                             str(checkpoint_path), checkpoint_s)
        answer = on_epoch(report) if on_epoch is not None else CONTINUE
        if answer == STOP and epoch < training.epochs:
            return outcome("stopped")
        if answer == ABANDON:
            return outcome("abandoned")
    return outcome("completed")


@dataclass
class TestEvaluation:
    """Top-1 of a trained network on the test split (:func:`evaluate_on_test`).

    Attributes:
        top1: a fraction.
        images: test images evaluated.
        weights: ``"ema"`` or ``"raw"``: the weights the validation split preferred at the checkpoint's epoch.
        epoch: completed training epochs of the checkpoint.
        val_top1: the best validation top-1 the checkpoint records (what selection used).
    """

    __test__ = False  # not a pytest test class

    top1: float
    images: int
    weights: str
    epoch: int
    val_top1: float


def evaluate_on_test(arch: Architecture, training: TrainingSpec, checkpoint_path: str | Path, device: str = "cpu",
                     precision: Precision | None = None, dataset: tuple[Any, int] | None = None) -> TestEvaluation:
    """Top-1 on the test split of the network that ``checkpoint_path`` (a :func:`train_candidate` checkpoint of
    ``arch`` trained with ``training``) holds: for the final models of the hub, once, after selection.

    The weights evaluated are those the *validation* split preferred at the checkpoint's last epoch (the EMA weights
    when they scored better there, else the raw ones), so the test split plays no part in any choice.

    Args:
        arch: the architecture as searched (the recipe's dropout rates and the dataset's classes are applied as in
            training, :func:`recipe_architecture`).
        device: ``cpu``, ``cuda`` or ``cuda:<index>``.
        precision: autocast dtype and memory format; default :func:`precision_policy` of ``device`` and the recipe.
        dataset: ``(test, num_classes)`` to reuse; default :func:`gpunet.data.build_test_dataset`.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable or of another architecture.
        gpunet.data.DatasetMissingError: the test split is not there.
    """
    dev = torch.device(device)
    test_ds, num_classes = dataset or build_test_dataset(training.dataset, training.recipe, arch.resolution, arch.in_chans)
    arch = recipe_architecture(arch, training, num_classes)
    state = load_checkpoint(checkpoint_path, arch)
    use_ema = bool(state.get("ema_better")) and state.get("ema") is not None
    precision = precision or precision_policy(dev, training.recipe.amp)
    model = build_model(arch)
    try:
        model.load_state_dict(state["ema"] if use_ema else state["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(str(checkpoint_path), reason=f"weights do not fit the architecture ({exc})") from exc
    top1 = top1_on_test(model, training, arch.resolution, arch.in_chans, device, precision, (test_ds, num_classes))
    return TestEvaluation(top1, len(test_ds), "ema" if use_ema else "raw", int(state.get("epoch", 0)),
                          float(state.get("best_top1", 0.0)))


def top1_on_test(model: nn.Module, training: TrainingSpec, resolution: int, in_chans: int, device: str = "cpu",
              precision: Precision | None = None, dataset: tuple[Any, int] | None = None) -> float:
    """Top-1 (a fraction) of any classifier ``model`` (``N x in_chans x resolution x resolution`` images -> ``N x
    classes`` logits, e.g. a timm baseline) on the test split of ``training.dataset``, evaluated as the validation
    split is during training. :func:`evaluate_on_test` does this for a searched network's checkpoint.

    Args:
        dataset: ``(test, num_classes)`` to reuse (:func:`gpunet.data.build_test_dataset` at this resolution).

    Raises:
        gpunet.data.DatasetMissingError: the test split is not there.
    """
    dev = torch.device(device)
    test_ds, _ = dataset or build_test_dataset(training.dataset, training.recipe, resolution, in_chans)
    precision = precision or precision_policy(dev, training.recipe.amp)
    model = precision.model(model.to(dev))
    loader = torch.utils.data.DataLoader(test_ds, batch_size=max(256, training.batch_size), shuffle=False,
                                         num_workers=training.recipe.workers, pin_memory=dev.type == "cuda")
    return evaluate(model, loader, dev, precision)
