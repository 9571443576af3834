"""The model hub as a library: a candidate trained through the controller comes back from `gpunet.hub.load` (and
timm) with the outputs of its checkpoint; broken hubs and weights files are refused by name, nothing is unpickled."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import timm
import torch

import gpunet.hub
from controller_helpers import fake_profile, micro_spec, trainer_request
from gpunet.arch import Architecture
from gpunet.controller import SearchController
from gpunet.controller.outputs import HubError, write_outputs
from gpunet.controller.state import ControllerState
from gpunet.model import build_model
from gpunet.rpc import pb
from gpunet.spec import parse_training
from gpunet.train import save_checkpoint, train_candidate

IMAGES = torch.Generator().manual_seed(1)


def synthetic(n: int) -> torch.utils.data.TensorDataset:
    """``n`` random 1 x 28 x 28 images with labels 0..9: enough for one epoch of a micro network."""
    return torch.utils.data.TensorDataset(torch.randn(n, 1, 28, 28, generator=IMAGES), torch.arange(n) % 10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A search directory whose one latency tier has a winner trained for 2 epochs with EMA (real trainer code)."""
    run_dir = tmp_path_factory.mktemp("run")
    spec = micro_spec(name="hub-test", tiers=(0.1,), budget=1)
    ctl = SearchController(spec, run_dir, round_interval_s=0)
    fake_profile(ctl)
    task = ctl.request_work(trainer_request("t0")).candidate
    training = parse_training(json.loads(task.training_json))
    training = dataclasses.replace(training, recipe=dataclasses.replace(training.recipe, ema=0.5))
    outcome = train_candidate(Architecture.from_dict(json.loads(task.architecture_json)), training, task.checkpoint_path,
                              datasets=(synthetic(64), synthetic(32), 10))
    assert ctl.report_result(pb.ResultReport(worker_id="t0", candidate_id=task.candidate_id, lease_id=task.lease_id,
                                             top1=outcome.best_top1, epochs=outcome.epochs,
                                             checkpoint_path=outcome.checkpoint_path)).accepted
    ctl.close()
    return run_dir, spec


def checkpoint_model(path: str, use_ema: bool) -> torch.nn.Module:
    """The network of a training checkpoint, built here independently of the hub code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(Architecture.from_dict(state["arch"]))
    model.load_state_dict(state["ema"] if use_ema else state["model"])
    return model.eval()


@pytest.mark.parametrize("ema_better", [True, False])
def test_hub_load_gives_the_outputs_of_the_weights_that_scored(trained, tmp_path: Path, ema_better: bool) -> None:
    run_dir, spec = trained
    (candidate,) = ControllerState.load(run_dir).candidates.values()
    checkpoint = candidate.checkpoint
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    save_checkpoint(checkpoint, {**state, "ema_better": ema_better})  # which of the two weight sets scored the top-1
    hub = write_outputs(spec, run_dir, tmp_path / "hub", measure=False, export=False)
    tier = hub["tiers"][0]
    assert tier["weights"] == f"weights/{tier['candidate_id']}.safetensors" and tier["weights_ema"] is ema_better
    assert tier["weights_top1"] == pytest.approx(state["history"][-1], abs=1e-6)

    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    loaded = gpunet.hub.load(tmp_path / "hub", tier=0)
    assert not loaded.training
    with torch.no_grad():
        expected, other = checkpoint_model(checkpoint, ema_better)(x), checkpoint_model(checkpoint, not ema_better)(x)
        got = loaded(x)
    assert not torch.allclose(expected, other), "raw and EMA weights must differ for the test to mean anything"
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(gpunet.hub.load(tmp_path / "hub" / "hub.json", tier=0.1)(x), expected)  # by target ms

    name = gpunet.hub.register(tmp_path / "hub", prefix=f"hubtest_{int(ema_better)}")[0]
    assert name == f"hubtest_{int(ema_better)}_0p1ms" and name in timm.list_pretrained("hubtest_*")
    via_timm = timm.create_model(name, pretrained=True).eval()
    torch.testing.assert_close(via_timm(x), expected)
    assert via_timm.pretrained_cfg["input_size"] == (1, 28, 28)
    assert via_timm.pretrained_cfg["mean"] == pytest.approx((0.2860,))
    fresh = timm.create_model(name, checkpoint_path=str(tmp_path / "hub" / tier["weights"])).eval()
    torch.testing.assert_close(fresh(x), expected)
    head = timm.create_model(name, pretrained=True, num_classes=3).eval()
    assert head(x).shape == (4, 3)
    torch.testing.assert_close(head.forward_features(x), via_timm.forward_features(x))


def copy_hub(trained, tmp_path: Path) -> tuple[Path, Path]:
    run_dir, spec = trained
    hub = write_outputs(spec, run_dir, tmp_path / "hub", measure=False, export=False)
    return tmp_path / "hub", tmp_path / "hub" / hub["tiers"][0]["weights"]


def test_corrupt_truncated_or_missing_weights_are_named(trained, tmp_path: Path) -> None:
    hub_dir, weights = copy_hub(trained, tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(HubError, match=f"{weights}: not a readable safetensors file"):
        gpunet.hub.load(hub_dir, tier=0)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(HubError, match="not a readable safetensors file"):
        gpunet.hub.load(hub_dir, tier=0)
    weights.unlink()
    with pytest.raises(HubError, match=f"{weights}: no such file"):
        gpunet.hub.load(hub_dir, tier=0)


class Boom:
    def __reduce__(self):
        return (Path("/nonexistent-marker").touch, ())


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(trained, tmp_path: Path) -> None:
    hub_dir, weights = copy_hub(trained, tmp_path)
    weights.write_bytes(pickle.dumps({"state": Boom()}))
    with pytest.raises(HubError, match="not a readable safetensors file"):
        gpunet.hub.load(hub_dir)
    assert not Path("/nonexistent-marker").exists()


def test_weights_of_another_network_are_refused(trained, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hub_dir, weights = copy_hub(trained, tmp_path)
    other = timm.create_model("gpunet_tiny")
    architecture = json.loads((hub_dir / "hub.json").read_text())["tiers"][0]["architecture"]
    metadata = {"format": "gpunet-hub-weights/v1", "candidate_id": "x", "architecture": json.dumps(architecture)}
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights), metadata=metadata)
    with pytest.raises(HubError, match=f"{weights}: .*tensor\\(s\\) do not fit the network"):
        gpunet.hub.load(hub_dir)


def test_hub_file_and_tier_errors_name_the_field(trained, tmp_path: Path) -> None:
    hub_dir, _ = copy_hub(trained, tmp_path)
    with pytest.raises(HubError, match="tier: got 3; expected a tier index 0..0 or a target in ms of \\[0.1\\]"):
        gpunet.hub.load(hub_dir, tier=3)
    with pytest.raises(HubError, match="tier: got 0.5"):
        gpunet.hub.load(hub_dir, tier=0.5)
    hub = json.loads((hub_dir / "hub.json").read_text())
    hub["tiers"][0]["weights"] = "../../elsewhere.safetensors"
    (hub_dir / "hub.json").write_text(json.dumps(hub))
    with pytest.raises(HubError, match="expected a path inside the hub's folder"):
        gpunet.hub.load(hub_dir)
    (hub_dir / "hub.json").write_text("{not json")
    with pytest.raises(HubError, match="hub.json: unreadable"):
        gpunet.hub.load(hub_dir)
    shutil.rmtree(hub_dir)
    with pytest.raises(HubError, match="hub.json: no such file"):
        gpunet.hub.load(hub_dir)


def test_timm_builds_nvidias_gpunets_and_preset_networks() -> None:
    assert {"gpunet_0", "gpunet_1", "gpunet_2", "gpunet", "gpunet_small", "gpunet_tiny"} <= set(timm.list_models("gpunet*"))
    gpunet_0 = timm.create_model("gpunet_0")
    assert sum(p.numel() for p in gpunet_0.parameters()) / 1e6 == pytest.approx(11.885, abs=1e-3)  # paper Table 3: 11.9 M
    assert gpunet_0.pretrained_cfg["input_size"] == (3, 320, 320)
    vector = gpunet.load_space("gpunet-tiny").sample(1, seed=4)[0].tolist()
    model = timm.create_model("gpunet_tiny", vector=vector, num_classes=5, drop_rate=0.0).eval()
    assert model.arch == dataclasses.replace(gpunet.load_space("gpunet-tiny").decode(vector), num_classes=5, dropout=0.0)
    assert model(torch.zeros(2, 1, vector[0], vector[0])).shape == (2, 5)
    with pytest.raises(HubError, match="gpunet_0 has no weights file"):
        timm.create_model("gpunet_0", pretrained=True)
    with pytest.raises(gpunet.SpaceError):
        timm.create_model("gpunet_tiny", vector=[1, 2, 3])


def test_import_gpunet_registers_nothing_and_stays_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys, gpunet; assert 'torch' not in sys.modules and 'timm' not in sys.modules and 'gpunet.hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
