"""The NASSearch spec: defaults from the paper, field-path errors, Kubernetes-only sections ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpunet.spec import API_VERSION, KIND, SearchSpec, SpecError, load_spec, parse_training

ROOT = Path(__file__).resolve().parent.parent


def doc(**spec: object) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "s1"}, "spec": spec}


def test_defaults_are_the_papers_table5_recipe() -> None:
    s = load_spec(doc())
    r = s.training.recipe
    assert (r.optimizer, r.lr, r.opt_eps, r.weight_decay) == ("rmsproptf", 0.06, 1e-3, 1e-5)
    assert (r.sched, r.decay_epochs, r.decay_rate, r.warmup_lr) == ("step", 2.4, 0.97, 1e-6)
    assert (r.ema, r.rand_augment, r.reprob, r.remode) == (0.9999, "rand-m9-mstd0.5", 0.2, "pixel")
    assert (r.drop_rate, r.drop_path_rate, r.amp, r.crop_pct) == (0.3, 0.2, True, 1.0)
    assert s.latency.tiers == (0.5, 1.0) and s.latency.tolerance == 0.1 and s.latency.samples == 100_000
    assert s.algorithm.name == "lamcts-bo" and s.training.early_stopping.rule == "median"


@pytest.mark.parametrize("path", ["examples/fashion-mnist.yaml", "examples/fashion-mnist-lacs.yaml", "examples/imagenet-gpunet.yaml"])
def test_examples_parse(path: str) -> None:
    s = load_spec(ROOT / path)
    assert isinstance(s, SearchSpec) and s.name
    assert s.space().num_vectors > 1


def test_kubernetes_sections_are_kept_but_not_interpreted() -> None:
    s = load_spec(doc(trainers={"maxReplicas": 4, "spot": True, "anything": {"x": 1}}, storage={"size": "10Gi"}))
    assert s.kubernetes == {"trainers": {"maxReplicas": 4, "spot": True, "anything": {"x": 1}}, "storage": {"size": "10Gi"}}


@pytest.mark.parametrize(
    "spec, field, words",
    [
        ({"latency": {"tolerance": 1.5}}, "spec.latency.tolerance", "(0, 1)"),
        ({"latency": {"tiers": [0.5, -1]}}, "spec.latency.tiers[1]", "> 0"),
        ({"latency": {"backend": "tvm"}}, "spec.latency.backend", "onnxruntime"),
        ({"latency": {"precision": "fp16", "device": "cpu"}}, "spec.latency.precision", "fp32"),
        ({"latency": {"backend": "onnxruntime", "precision": "fp16"}}, "spec.latency.precision", "fp16 needs cuda"),
        ({"latency": {"backend": "tensorrt", "device": "cpu"}}, "spec.latency.device", "TensorRT runs on NVIDIA GPUs"),
        ({"latency": {"backend": "tensorrt"}}, "spec.latency.device", "cuda with backend tensorrt"),
        ({"latency": {"backend": "onnxruntime", "device": "cuda"}}, "spec.latency.device", "cpu with backend onnxruntime"),
        ({"latency": {"device": "cuda", "precision": "fp16"}}, "spec.latency.device", "cpu with backend onnxruntime"),
        ({"algorithm": {"budget": 0}}, "spec.algorithm.budget", ">= 1"),
        ({"training": {"epochs": "3"}}, "spec.training.epochs", "integer"),
        ({"training": {"recipe": {"lrate": 0.1}}}, "spec.training.recipe.lrate", "unknown field"),
        ({"training": {"dataset": {"kind": "imagefolder"}}}, "spec.training.dataset.path", "ImageFolder"),
        ({"training": {"earlyStopping": {"rule": "hyperband"}}}, "spec.training.earlyStopping.rule", "asha"),
        ({"training": {"earlyStopping": {"reductionFactor": 1}}}, "spec.training.earlyStopping.reductionFactor", ">= 2"),
        ({"training": {"dataset": {"valSplit": 0}}}, "spec.training.dataset.valSplit", "> 0"),
        ({"training": {"dataset": {"valSplit": 2500.5}}}, "spec.training.dataset.valSplit", "a whole count of images"),
        ({"profiler": {}}, "spec.profiler", "unknown field"),
        ({"latency": {"batch_size": 2}}, "spec.latency.batch_size", "batchSize"),
        ({"algorithm": {"name": "random", "options": {"n_init": 2}}}, "spec.algorithm.options.n_init", "unknown option"),
        ({"algorithm": {"name": "lamcts-bo", "options": {"output_warp": "log"}}}, "spec.algorithm.options.output_warp",
         "one of power, rank, none"),
        ({"algorithm": {"objective": "pareto"}}, "spec.algorithm.objective", "mnas"),
        ({"algorithm": {"objective": "mnas"}}, "spec.algorithm.targetMs", "> 0 with objective mnas"),
        ({"algorithm": {"w": 0.07}}, "spec.algorithm.w", "<= 0"),
        ({"scaling": {"targetsMs": [1.0, 0]}}, "spec.scaling.targetsMs[1]", "> 0"),
        ({"scaling": {"targetsMs": [1.0], "baseTier": 2}}, "spec.scaling.baseTier", "0..1"),
        ({"scaling": {"depthMultipliers": []}}, "spec.scaling.depthMultipliers", "1 to 32"),
        ({"scaling": {"candidatesPerTarget": 0}}, "spec.scaling.candidatesPerTarget", "[1, 16]"),
    ],
)
def test_errors_name_the_field_value_and_expectation(spec: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(doc(**spec))
    assert info.value.field == field
    assert str(info.value).startswith(field) and words in str(info.value)


def test_objective_and_scaling_defaults_keep_the_tiered_search_without_scaling() -> None:
    s = load_spec(doc())
    assert (s.algorithm.objective, s.algorithm.w, s.algorithm.hard) == ("tiered", -0.07, False)
    assert s.tier_targets == s.latency.tiers and not s.scaling.enabled
    m = load_spec(doc(algorithm={"objective": "mnas", "targetMs": 0.8, "w": -1.0, "hard": True},
                      scaling={"targetsMs": [0.4, 1.6]}))
    assert m.tier_targets == (0.8,) and m.scaling.enabled and m.scaling.targets_ms == (0.4, 1.6)


def test_wrong_api_version_kind_or_name() -> None:
    with pytest.raises(SpecError, match="apiVersion"):
        load_spec({**doc(), "apiVersion": "v1"})
    with pytest.raises(SpecError, match="kind"):
        load_spec({**doc(), "kind": "Job"})
    with pytest.raises(SpecError, match="metadata.name"):
        load_spec({**doc(), "metadata": {"name": "Bad_Name"}})


def test_search_space_errors_come_from_the_space(tmp_path: Path) -> None:
    from gpunet.errors import SpaceError

    with pytest.raises(SpaceError, match="searchSpace"):
        load_spec(doc(searchSpace={"preset": "gpunet-tiny", "resolution": [3]}))


def test_training_round_trips_through_json() -> None:
    s = load_spec(doc(training={"epochs": 2, "recipe": {"lr": 0.01, "randAugment": ""}, "dataset": {"trainSubset": 100}}))
    again = parse_training(s.training.to_dict())
    assert again == s.training and again.dataset.train_subset == 100 and again.recipe.rand_augment == ""


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def test_a_gpunet_x_tiny_spec_parses_with_its_block_digits() -> None:
    s = load_spec(doc(searchSpace={"preset": "gpunet-x-tiny"}))
    assert s.space().name == "gpunet-x-tiny" and s.space().vector_length == 48
    narrowed = load_spec(doc(searchSpace={"preset": "gpunet-x-tiny", "stages": {4: {"block": "irb"}}})).space()
    assert narrowed.vector_length == 47 and narrowed.stages[4].blocks == ("irb",)
    widened = load_spec(doc(searchSpace={"preset": "gpunet-tiny", "stages": {4: {"block": ["fused_irb", "irb"]}}}))
    assert widened.space().vector_length == 42


@pytest.mark.parametrize(("baselines", "field", "says"), [
    ("mobilenetv3_small_050", "spec.baselines", "a list of at most 16 baselines"),
    ([{"resolution": 32}], "spec.baselines[0]", "a mapping with a timm model name under 'model'"),
    ([{"model": "resnet18", "inchans": 1}], "spec.baselines[0].inchans", "unknown field"),
    ([{"model": "resnet 18"}], "spec.baselines[0].model", "a string matching"),
    ([{"model": "resnet18"}, {"model": "resnet18"}], "spec.baselines", "distinct baselines"),
])
def test_bad_baselines_are_refused_naming_the_field(baselines: object, field: str, says: str) -> None:
    with pytest.raises(SpecError, match=f"^{re.escape(field)}: .*{re.escape(says)}"):
        load_spec(doc(baselines=baselines))


def test_stage2_training_takes_the_final_epochs_and_recipe_overrides() -> None:
    spec = load_spec(doc(training={"epochs": 3, "recipe": {"lr": 0.01}, "final": {"epochs": 2, "init": "checkpoint",
                                                                               "recipe": {"lr": 0.002}}},
                         baselines=[{"model": "resnet18", "inChans": 1}]))
    assert spec.baselines[0].in_chans == 1 and spec.baselines[0].resolution == 0
    stage2 = spec.training.stage2(resumed_epochs=3)
    assert (stage2.epochs, stage2.recipe.lr, stage2.early_stopping.enabled, stage2.final.epochs) == (5, 0.002, False, 0)
    assert parse_training(stage2.to_dict()) == stage2, "the trainer reads it back from training_json"
    assert load_spec(doc()).training.final.epochs == 0 and load_spec(doc()).baselines == (), "off by default"
    with pytest.raises(SpecError, match=r"^spec.training.final.recipe.lr: got -1.0; expected a number > 0"):
        load_spec(doc(training={"final": {"epochs": 1, "recipe": {"lr": -1}}}))
    with pytest.raises(SpecError, match=r"^spec.training.final.init: got 'warm'"):
        load_spec(doc(training={"final": {"init": "warm"}}))
