"""``gpunet arch show|sample``: inspect one architecture, or draw random valid vectors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from ..arch import BLOCKS, Architecture
from ..errors import NotInSpaceError, SpaceError
from ..nvidia import load_architecture, to_nvidia
from ..space import SearchSpace, load_space, preset_names
from . import Output, UsageError, add_output_option


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("arch", help="architectures: show, sample").add_subparsers(dest="cmd", required=True)
    p = group.add_parser("show", help="stage table, parameters and GFLOPs of one architecture")
    p.add_argument("arch", help="a vector (41 comma-separated integers; 48 for gpunet-x), or a JSON file (our format or NVIDIA's layer list)")
    p.add_argument("--preset", default=None, choices=preset_names(), help="space to decode/encode with (default: gpunet)")
    p.add_argument("--head-channels", type=int, default=None, help="override the space's head width (e.g. 1280)")
    p.add_argument("--write-json", type=Path, default=None, help="write the architecture in our JSON format")
    p.add_argument("--write-nvidia", type=Path, default=None, help="write the architecture as an NVIDIA layer list")
    add_output_option(p)
    p.set_defaults(func=show)

    p = group.add_parser("sample", help="N uniformly random valid vectors (-o table: one per line)")
    p.add_argument("--preset", default="gpunet", choices=preset_names())
    p.add_argument("-n", type=int, default=5, help="number of vectors")
    p.add_argument("--seed", type=int, default=0, help="seed of the random generator")
    add_output_option(p)
    p.set_defaults(func=sample)


def parse_arch(text: str, space: SearchSpace) -> tuple[Architecture, list[int] | None, str | None]:
    """An architecture from a vector string or a file; returns (arch, vector or None, why-not-encodable)."""
    path = Path(text)
    if path.suffix == ".json" or path.exists():
        arch = load_architecture(path)
        try:
            if arch.head_channels != space.head_channels and arch.num_classes == space.num_classes:
                space = load_space({"preset": space.name.split("+")[0], "headChannels": arch.head_channels})
            return arch, space.encode(arch), None
        except NotInSpaceError as exc:
            return arch, None, str(exc)
    try:
        vector = [int(x) for x in text.replace(" ", "").strip("[]").split(",")]
    except ValueError:
        raise UsageError("ARCH", text, f"{space.vector_length} comma-separated integers or a JSON file path") from None
    return space.decode(vector), vector, None


def show(args: argparse.Namespace) -> Output:
    overrides = {"headChannels": args.head_channels} if args.head_channels else {}
    space = load_space({"preset": args.preset or "gpunet", **overrides})
    arch, vector, why = parse_arch(args.arch, space)
    from ..model import build_model, model_stats  # torch only when needed

    stats = model_stats(arch, build_model(arch))
    if args.write_json:
        args.write_json.write_text(json.dumps({**arch.to_dict(), "vector": vector}, indent=2) + "\n")
    if args.write_nvidia:
        args.write_nvidia.write_text(json.dumps(to_nvidia(arch), indent=2) + "\n")
    data = {
        "params_m": round(stats.params_m, 4),
        "gflops": round(stats.gflops, 4),
        "gmacs": round(stats.gflops / 2, 4),  # the paper's Table 3 "#FLOPS" counts multiply-adds
        "resolution": arch.resolution,
        "vector": vector,
        "space": space.name,
        "not_in_space": why,
        "layers": arch.num_layers,
        "architecture": arch.to_dict(),
    }
    return Output(data, lambda d: arch_view(arch, d))


def arch_view(arch: Architecture, data: dict) -> list:
    """Stage table, parameters, FLOPs and vector of ``arch show``."""
    table = Table(title=f"{arch.name or 'architecture'} @ {arch.resolution}x{arch.resolution}")
    for col in ("stage", "block", "stride", "filters", "kernel", "layers", "expansion", "SE", "act"):
        table.add_column(col)
    for i, s in enumerate(arch.stages):
        exp, se = (str(s.expansion), str(int(s.se))) if BLOCKS[s.block].uses_expansion else ("-", "-")
        table.add_row(str(i), s.block, str(s.stride), str(s.filters), str(s.kernel), str(s.layers), exp, se, s.act)
    table.add_row("8", "head", "1", str(arch.head_channels), "1", "1", "-", "-", arch.head_act)
    vector, space = data["vector"], data["space"]
    return [table,
            f"parameters: {data['params_m']:.3f} M   FLOPs: {data['gflops']:.3f} G ({data['gmacs']:.3f} G multiply-adds, "
            f"Table 3's unit)   classes: {arch.num_classes}",
            f"vector ({space}): {','.join(map(str, vector))}" if vector else f"not in space {space}: {data['not_in_space']}"]


def sample(args: argparse.Namespace) -> Output:
    if args.n < 0:
        raise UsageError("-n", args.n, "an integer >= 0")
    vectors = load_space(args.preset).sample(args.n, seed=args.seed).tolist()
    data = {"preset": args.preset, "seed": args.seed, "vectors": vectors}
    return Output(data, lambda d: "\n".join(",".join(map(str, v)) for v in d["vectors"]) if d["vectors"] else [])
