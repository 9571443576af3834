"""Training checkpoints are read without unpickling: a checkpoint on the shared volume can come from anyone who can
write there, and a pickle can carry code (issue 13, item 1). That the trainer's own checkpoints load this way is
tested with the training loop, in tests/test_cuda_paths.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gpunet.space import load_space
from gpunet.train import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MARKER = "gpunet-test-pickle-ran"


class _RunsCode:
    """Unpickling this object calls ``Path.touch`` on the path it was made with."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _arch():
    space = load_space("gpunet-tiny")
    return space.decode(space.sample(1, seed=0)[0].tolist())


def test_a_checkpoint_that_carries_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / "evil.pt"
    # torch.save pickles, so the payload sits where a trainer's checkpoint would be.
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_checkpoint(path, _arch())
    assert info.value.field == str(path)
    assert not marker.exists()


def test_no_module_loads_with_weights_only_false() -> None:
    pattern = re.compile(r"weights_only\s*=\s*False")
    offenders = [str(p.relative_to(ROOT)) for folder in ("gpunet", "worker", "operator", "benchmarks")
                 for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
