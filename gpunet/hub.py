"""The model hub as a library: a search's tier winners with their trained weights, and GPUNets through timm.

::

    import gpunet.hub, timm

    model = gpunet.hub.load("runs/fashion-mnist", tier=0.6)   # the 0.6 ms tier's winner, trained, eval mode
    timm.create_model("gpunet_2")                            # NVIDIA's GPUNet-2 (1.75 ms on a GV100)
    timm.create_model("gpunet_tiny", vector=[32, 16, ...])   # any network of a preset space (its vector: 41 integers, 48 for gpunet-x)
    names = gpunet.hub.register("runs/fashion-mnist")        # ["gpunet_fashion_mnist_0p2ms", ...]
    timm.create_model(names[0], pretrained=True)             # the same network and weights as load()

Weights are safetensors files (``weights/<candidate>.safetensors``, written by
:func:`gpunet.controller.outputs.write_outputs`) whose metadata holds the architecture; nothing is unpickled.
Importing this module imports torch and timm and registers with timm (``timm.models.register_model``):

- ``gpunet_0``, ``gpunet_1``, ``gpunet_2``: NVIDIA's released GPUNets (layer lists in :mod:`gpunet.archs`),
  ImageNet heads, random initialisation (no weights are shipped); ``pretrained=True`` needs a weights file, e.g.
  ``pretrained_cfg_overlay=dict(file=PATH)``;
- ``gpunet``, ``gpunet_small``, ``gpunet_tiny``: one network of the preset space of that name, given as
  ``vector=`` (the space's vector: Table 2's 41 integers, plus block digits for gpunet-x; default: the middle value of every digit).

Every entry point takes timm's ``num_classes``, ``in_chans``, ``drop_rate`` and ``drop_path_rate``. ``import
gpunet`` registers nothing and stays free of torch.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model, resolve_pretrained_cfg
from torch import nn

from .arch import Architecture
from .archs import RELEASED, released_path
from .controller.outputs import WEIGHTS_FORMAT, HubError, hub_path, read_hub, select_tier
from .model import build_model
from .space import load_space, preset_names

__all__ = ["HubError", "load", "load_weights", "register"]

#: Pretrained configs of the registered names, read by ``register_model`` (timm's convention: a module-level dict).
default_cfgs: dict[str, dict[str, Any]] = {}
#: timm's keyword arguments that the entry points map onto :class:`~gpunet.arch.Architecture` fields.
ARCH_KWARGS = {"num_classes": "num_classes", "in_chans": "in_chans", "drop_rate": "dropout", "drop_path_rate": "drop_path_rate"}
#: Module names of the classifier; left out of a pretrained load when ``num_classes`` changes.
CLASSIFIER = "head.classifier.fc"
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Architecture]:
    """Read a hub weights file: its state dict and the architecture in its metadata.

    Raises:
        HubError: the file is missing, is not safetensors, is not a hub weights file, or holds a bad architecture.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise HubError(str(path), reason="no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError and others for a corrupt file
        raise HubError(str(path), reason=f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise HubError(f"{path}: metadata format", metadata.get("format"), repr(WEIGHTS_FORMAT))
    try:
        arch = Architecture.from_dict(json.loads(metadata["architecture"]))
    except Exception as exc:  # noqa: BLE001 - missing key, bad JSON, SpaceError
        raise HubError(f"{path}: metadata architecture", reason=f"unusable ({type(exc).__name__}: {exc})") from None
    return state, arch


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, skip: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` strictly (except keys under ``skip``); raises :class:`HubError` naming the
    first missing, unexpected or mis-shaped tensor."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in state.items() if not k.startswith(skip)}
    problems = [f"missing {k}" for k in sorted(expected.keys() - given.keys())]
    problems += [f"unexpected {k}" for k in sorted(given.keys() - expected.keys())]
    problems += [f"{k} of shape {tuple(given[k].shape)} instead of {tuple(expected[k].shape)}"
                 for k in sorted(expected.keys() & given.keys()) if given[k].shape != expected[k].shape]
    if problems:
        raise HubError(str(path), reason=f"{len(problems)} tensor(s) do not fit the network ({problems[0]})",
                       expected="the state dict of the network it was saved from")
    model.load_state_dict(given, strict=not skip)


def _weights_file(hub_file: Path, entry: dict[str, Any]) -> Path:
    """The weights file of a hub entry; a path that leaves the hub's folder is refused."""
    rel = entry.get("weights")
    if not isinstance(rel, str) or not rel:
        raise HubError(f"{hub_file}: tier {entry['index']} weights", rel, "a weights file of the tier's winner",
                       reason="no weights recorded (the checkpoint was unreadable, or the hub predates weights)")
    base = hub_file.parent.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise HubError(f"{hub_file}: tier {entry['index']} weights", rel, "a path inside the hub's folder")
    return path


def load(source: str | Path, tier: int | float | None = None, *, family: bool = False) -> nn.Module:
    """The trained network of one latency tier of a search, in eval mode on the CPU.

    Args:
        source: a run directory (holding ``hub.json``) or a ``hub.json`` path.
        tier: the tier's index (int), its target latency in ms (float, e.g. ``0.2``), or None when only one tier
            has a trained network.
        family: ``tier`` names a member of the latency-aware compound scaling family (``hub.json``'s ``family``,
            by index or target in ms) instead of a tier.

    Returns:
        A :class:`gpunet.model.GPUNet` with the winner's weights: images ``N x C x R x R`` (normalised with the
        hub's ``preprocessing`` mean and std) -> logits ``N x num_classes``.

    Raises:
        HubError: a missing or corrupt ``hub.json`` or weights file (naming the file and what is wrong), or a tier
            the hub does not have.
    """
    hub_file = hub_path(source)
    hub = read_hub(hub_file)
    if family:
        hub = {"tiers": hub.get("family") or []}
    entry = select_tier(hub, tier, where=f"{hub_file}{' family' if family else ''}")
    path = _weights_file(hub_file, entry)
    state, arch = load_weights(path)
    if entry.get("architecture") not in (None, arch.to_dict()):
        raise HubError(str(path), reason=f"its architecture differs from tier {entry['index']}'s in {hub_file}")
    model = build_model(arch)
    _load_state(model, state, path)
    return model.eval()


# --- timm --------------------------------------------------------------------------------------------------
def _entrypoint(name: str, base: Callable[[dict[str, Any]], Architecture]) -> Callable[..., nn.Module]:
    """A timm entry point named ``name`` that builds ``base(kwargs)`` with timm's keyword arguments applied."""

    def create(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: dict[str, Any] | None = None,
               cache_dir: Any = None, **kwargs: Any) -> nn.Module:
        arch = base(kwargs)  # consumes its own keywords (vector=)
        unknown = sorted(set(kwargs) - set(ARCH_KWARGS))
        if unknown:
            raise HubError(f"{name} keyword arguments", unknown, sorted(ARCH_KWARGS))
        trained_classes = arch.num_classes
        arch = dataclasses.replace(arch, **{ARCH_KWARGS[k]: v for k, v in kwargs.items()})
        model = build_model(arch)
        cfg = resolve_pretrained_cfg(name, pretrained_cfg, pretrained_cfg_overlay)
        if pretrained:
            if not cfg.file:
                raise HubError("pretrained", True, "a name from gpunet.hub.register(RUN_DIR), or "
                               "pretrained_cfg_overlay=dict(file=WEIGHTS.safetensors)", reason=f"{name} has no weights file")
            state, _ = load_weights(cfg.file)
            _load_state(model, state, Path(cfg.file), skip=(CLASSIFIER,) if arch.num_classes != trained_classes else ())
        model.pretrained_cfg = model.default_cfg = cfg.to_dict()
        model.num_classes = arch.num_classes
        return model  # in training mode, as timm's models come

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = default_cfgs[name].get("description")
    setattr(sys.modules[__name__], name, create)  # timm's convention: entry points are module attributes
    return register_model(create)


def _cfg(arch: Architecture, description: str, **extra: Any) -> dict[str, Any]:
    return {"num_classes": arch.num_classes, "input_size": (arch.in_chans, arch.resolution, arch.resolution),
            "first_conv": "stem.conv", "classifier": CLASSIFIER, "description": description, **extra}


def _register_released() -> None:
    from .nvidia import load_architecture

    for released, latency_ms in RELEASED.items():
        arch = load_architecture(released_path(released))
        name = released.replace("-", "_")
        default_cfgs[name] = _cfg(arch, f"NVIDIA's {released.upper()} ({latency_ms} ms on a GV100, TensorRT FP16; "
                                        "GPUNet paper Table 3), random initialisation",
                                  mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, paper_name="GPUNet")
        _entrypoint(name, lambda kwargs, arch=arch: arch)


def _register_presets() -> None:
    for preset in preset_names():
        space = load_space(preset)
        middle = space.from_indices([(n - 1) // 2 for n in space.cardinalities])
        name = preset.replace("-", "_")

        def base(kwargs: dict[str, Any], space: Any = space, middle: list[int] = middle) -> Architecture:
            return space.decode(kwargs.pop("vector", middle))

        default_cfgs[name] = _cfg(space.decode(middle), f"a network of the {preset} search space, given as vector= "
                                                       f"({space.vector_length} integers; default: the middle value of every digit)")
        _entrypoint(name, base)


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def register(source: str | Path, prefix: str | None = None) -> list[str]:
    """Register the tier winners of a search with timm, so that ``timm.create_model(name, pretrained=True)`` builds
    them with their trained weights (through the weights file as ``pretrained_cfg["file"]``).

    Args:
        source: a run directory or a ``hub.json`` path.
        prefix: the names' prefix (lowercase letters, digits, ``_``); default ``gpunet_<search name>``.

    Returns:
        The registered names, ``<prefix>_<target>ms`` with the tier's target in ms and ``p`` for the decimal point
        (``gpunet_fashion_mnist_0p2ms``), in tier order; tiers without a trained network are left out.

    Raises:
        HubError: as :func:`load`, or a bad ``prefix``.
    """
    hub_file = hub_path(source)
    hub = read_hub(hub_file)
    prefix = prefix if prefix is not None else "gpunet_" + _identifier(hub.get("search", "search"))
    if not _NAME.fullmatch(prefix):
        raise HubError("prefix", prefix, "lowercase letters, digits and '_', not starting with a digit")
    preprocessing = hub.get("preprocessing") or {}
    names = []
    for index, tier in enumerate(hub["tiers"]):
        if not tier.get("candidate_id"):
            continue
        entry = select_tier(hub, index, where=str(hub_file))
        path = _weights_file(hub_file, entry)
        _, arch = load_weights(path)
        name = f"{prefix}_{entry['target_ms']:g}ms".replace(".", "p").replace("-", "_")
        top1 = entry.get("weights_top1")
        default_cfgs[name] = _cfg(arch, f"tier {entry['target_ms']:g} ms winner {entry['candidate_id']} of search "
                                        f"{hub.get('search')!r}" + (f", top-1 {100 * top1:.2f}%" if top1 is not None else ""),
                                  file=str(path), **{k: tuple(v) for k, v in preprocessing.items() if k in ("mean", "std")})
        _entrypoint(name, lambda kwargs, arch=arch: arch)
        names.append(name)
    return names


_register_released()
_register_presets()
