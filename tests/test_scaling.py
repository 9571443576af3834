"""Latency-aware compound scaling, latency only (gpunet.scaling and `gpunet scale`) on a fixed latency table."""

from __future__ import annotations

import json
import math

import pytest

from gpunet.cli import main
from gpunet.errors import GpunetError
from gpunet.latency import LatencyTable, LatencyTarget, Measurement
from gpunet.latency.estimate import estimate_latency, layer_keys
from gpunet.latency.profiling import required_keys
from gpunet.scaling import channel_step, family_grid, plan_family, resolution_step, scale_architecture
from gpunet.space import load_space
from gpunet.spec import ScalingSpec

TARGET = LatencyTarget("onnxruntime", "test-cpu", "fp32", 1)
BASE_VECTOR = [28, 8, 3, 0, 1, 16, 3, 2, 0, 0, 1, 24, 3, 2, 0, 0, 1, 32, 3, 2, 0, 0, 1, 48, 3, 2, 0, 0, 1,
               64, 3, 2, 0, 0, 1, 96, 3, 2, 0, 0, 1]


def fixed_ms(key) -> float:
    """A fixed cost model for the table: multiply-accumulates of the layer's output, 1 ms per 10 MMAC, + 1 us."""
    _, c, h, w = key.input_shape
    k = key.kernel or 1
    macs = c * key.out_chs * k * k * (h // key.stride) * (w // key.stride) * max(key.expansion, 1)
    return 1e-3 + macs / 1e7


def fill(table: LatencyTable, archs) -> None:
    keys = table.missing(required_keys(TARGET, archs=archs))
    table.put_many((k, Measurement(fixed_ms(k), 0.0, 1, "onnxruntime", "fixed")) for k in keys)


@pytest.fixture()
def space():
    return load_space("gpunet-tiny")


def test_steps_come_from_the_space(space):
    assert channel_step(space) == 8 and resolution_step(space) == 4
    assert channel_step(load_space("gpunet")) == 8 and resolution_step(load_space("gpunet")) == 32


def test_scaling_rounds_depth_up_and_width_and_resolution_to_the_steps(space):
    base = space.decode(BASE_VECTOR)
    arch = scale_architecture(base, 1.5, 1.3, 1.2, channels=8, resolution=4)
    assert arch.stages[0].layers == 1  # the stem stays one convolution
    assert [s.layers for s in arch.stages[1:]] == [2] * 7  # ceil(1 x 1.5)
    # 8x1.3 = 10.4 rounds to 8, more than 10% lost: 16; 16x1.3 = 20.8 -> 24; 96x1.3 = 124.8 -> 128
    assert [s.filters for s in arch.stages] == [16, 16, 24, 32, 40, 64, 80, 128]
    assert arch.resolution == 32 and arch.head_channels == 168  # 28x1.2=33.6 -> 32; 128x1.3=166.4 -> 168
    assert scale_architecture(base, 1.0, 1.0, 1.0) == base
    with pytest.raises(GpunetError, match="depth_mult"):
        scale_architecture(base, 0.0, 1.0, 1.0)


def test_lacs_picks_for_each_target_the_largest_scaled_networks_that_meet_it(tmp_path, space):
    base = space.decode(BASE_VECTOR)
    grid = ScalingSpec(depth_multipliers=(1.0, 1.5, 2.0, 3.0), width_multipliers=(1.0, 1.25, 1.5),
                       resolution_multipliers=(1.0, 1.15, 1.3))
    networks = family_grid(base, space, grid)
    assert 2 <= len(networks) <= 36 and len({a for *_, a in networks}) == len(networks)
    with LatencyTable(tmp_path / "t.sqlite") as table:
        fill(table, [a for *_, a in networks])
        latency = {a: estimate_latency(a, table, TARGET) for *_, a in networks}
        base_ms = latency[base]
        targets = [0.5 * base_ms, 1.3 * base_ms, 2.0 * base_ms, 4.0 * base_ms]
        family = plan_family(networks, lambda a: estimate_latency(a, table, TARGET), targets, per_target=3)
    assert [f.target_ms for f in family] == targets
    assert family[0].choices == ()  # even the base exceeds half its own latency
    for member in family[1:]:
        assert member.choices, f"target {member.target_ms} not met"
        meeting = sorted((ms for ms in latency.values() if ms <= member.target_ms), reverse=True)
        assert [c.latency_ms for c in member.choices] == pytest.approx(meeting[:3])
        for c in member.choices:
            assert c.latency_ms <= member.target_ms
            assert c.latency_ms == pytest.approx(sum(fixed_ms(k) for k in layer_keys(c.architecture, TARGET)))
            assert c.architecture == scale_architecture(base, c.depth_mult, c.width_mult, c.resolution_mult,
                                                        channels=8, resolution=4)
    # a larger budget affords a larger network
    assert family[3].choices[0].latency_ms > family[2].choices[0].latency_ms > family[1].choices[0].latency_ms


def test_gpunet_scale_prints_the_plan_and_refuses_a_table_that_lacks_layers(tmp_path, capsys, space):
    base = space.decode(BASE_VECTOR)
    path = tmp_path / "t.sqlite"
    args = ["scale", ",".join(map(str, BASE_VECTOR)), "--table", str(path), "--preset", "gpunet-tiny",
            "--targets", "0.02,10", "--depth", "1,2", "--width", "1,1.5", "--resolution", "1", "--per-target", "2",
            "--no-fill", "--backend", "onnxruntime"]
    with LatencyTable(path) as table:
        table.put_many((k, Measurement(fixed_ms(k), 0.0, 1, "onnxruntime", "fixed"))
                       for k in required_keys(TARGET, archs=[base]))
        table.set_meta("build", {"preset": "gpunet-tiny", "target": TARGET.to_dict()})
    assert main(args) == 2
    assert "layer" in capsys.readouterr().err
    grid = ScalingSpec(depth_multipliers=(1.0, 2.0), width_multipliers=(1.0, 1.5), resolution_multipliers=(1.0,))
    with LatencyTable(path) as table:
        fill(table, [a for *_, a in family_grid(base, space, grid)])
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["networks"] == 4 and data["layers_measured"] == 0
    small, large = data["family"]
    assert small["met"] is False and small["choices"] == []  # 0.02 ms: under even the base
    assert large["met"] is True and len(large["choices"]) == 2
    assert large["choices"][0]["depth_mult"] == 2.0 and large["choices"][0]["width_mult"] == 1.5
    assert all(c["latency_ms_estimated"] <= 10 for c in large["choices"])
    assert not math.isclose(large["choices"][0]["latency_ms_estimated"], data["base_latency_ms"])
