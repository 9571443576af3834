"""The ask/tell contract of gpunet.search: spaces, determinism, state round trip, pending asks, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gpunet import search
from gpunet.errors import GpunetError
from gpunet.search import BoxSpace, CategoricalSpace, IntegerSpace, SearchError
from gpunet.space import load_space

FAST = {"random": {}, "sobol": {}, "evolution": {"population_size": 6}}
MODEL = {name: {"n_init": 4, "max_candidates": 256} for name in ("bo", "turbo", "lamcts-bo", "lamcts-turbo")}
ALL = {**FAST, **MODEL}


def _value(space, params):
    z = space.to_features([params])[0]
    return -float(np.sum((z - 0.3) ** 2))


def _drive(searcher, asks: int, batch: int) -> None:
    for _ in range(asks):
        for t in searcher.ask(batch):
            searcher.tell(t.id, _value(searcher.space, t.params))


def test_import_is_light():
    code = "import sys, gpunet.search; print('torch' in sys.modules or 'botorch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_spaces_encode_and_decode_points():
    box = BoxSpace([-5.0, 0.0], [10.0, 1.0])
    assert box.from_features(box.to_features([[2.5, 0.5]])) == [[2.5, 0.5]]
    ints = IntegerSpace([0, -2], [3, 2])
    pts = [[0, -2], [3, 2], [1, 0]]
    assert ints.from_features(ints.to_features(pts)) == pts
    cat = CategoricalSpace([["a", "b", "c"], [1, 2]])
    assert cat.num_features == 5
    assert cat.from_features(cat.to_features([["c", 1]])) == [["c", 1]]


def test_gpunet_space_as_ordinal_integer_space_with_a_pool():
    gspace = load_space("gpunet")
    full = IntegerSpace.from_search_space(gspace)
    assert full.dim == 41 and full.values[0] == gspace.digits[0].values
    pool = gspace.sample(64, seed=0)
    tier = IntegerSpace.from_search_space(gspace, pool=pool)
    allowed = {tuple(map(int, p)) for p in pool}
    searcher = search.create("sobol", tier, seed=1)
    asked = [tuple(t.params) for t in searcher.ask(40)]
    assert set(asked) <= allowed and len(set(asked)) == 40
    gspace.decode(list(asked[0]))  # asks are architecture vectors of digit values
    restored = search.Space.from_dict(json.loads(json.dumps(tier.to_dict())))
    assert restored.to_dict() == tier.to_dict()


@pytest.mark.parametrize("name", list(ALL))
def test_same_seed_gives_same_asks(name):
    space = BoxSpace([0.0] * 3, [1.0] * 3)
    runs = []
    for _ in range(2):
        s = search.create(name, space, seed=7, **ALL[name])
        _drive(s, 4, 2)
        runs.append([t.params for t in s.trials.values()])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name", list(ALL))
def test_restored_searcher_gives_the_same_next_asks(name):
    space = IntegerSpace([0, 0, 0], [6, 6, 6])
    s = search.create(name, space, seed=3, **ALL[name])
    _drive(s, 3, 2)
    pending = s.ask(2)  # pending trials survive the round trip too
    state = json.loads(json.dumps(s.state_dict()))
    r = search.from_state_dict(state)
    assert [t.params for t in r.ask(2)] == [t.params for t in s.ask(2)]
    r.tell(pending[0].id, 1.0)
    r.tell_failed(pending[1].id)


@pytest.mark.parametrize("name", list(ALL))
def test_pending_asks_never_repeat_a_point(name):
    space = CategoricalSpace([["a", "b", "c"]] * 3)  # 27 points
    s = search.create(name, space, seed=0, **ALL[name])
    _drive(s, 2, 3)
    first = s.ask(4)
    second = s.ask(4)  # asked while the first four are still pending
    s.tell_failed(first[0].id)
    third = s.ask(3)
    keys = [space.key(t.params) for t in s.trials.values()]
    assert len(keys) == len(set(keys)) == 6 + 4 + 4 + 3
    assert first and second and third


def test_pool_restricted_search_asks_only_pool_points():
    space = IntegerSpace([0] * 4, [4] * 4)
    pool = [[i % 5, i // 5, (i * 3) % 5, 4 - i % 5] for i in range(12)]
    tier = space.restrict(pool)
    for name in ALL:
        s = search.create(name, tier, seed=0, **ALL[name])
        _drive(s, 4, 3)
        asked = [t.params for t in s.trials.values()]
        assert all(p in pool for p in asked) and len({tuple(p) for p in asked}) == 12
        with pytest.raises(SearchError, match="unused points"):
            s.ask(1)


def test_tell_and_tell_failed_check_the_trial():
    s = search.create("random", BoxSpace([0.0], [1.0]), seed=0)
    (t,) = s.ask()
    s.tell(t.id, 0.5)
    with pytest.raises(SearchError, match="already complete"):
        s.tell(t.id, 0.7)
    with pytest.raises(SearchError, match="no such trial"):
        s.tell_failed(99)
    (u,) = s.ask()
    s.tell(u.id, float("nan"))  # a non-finite value is a failure
    assert s.trials[u.id].status == search.FAILED and s.best.id == t.id


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda sp: search.create("cmaes", sp), r"algorithm: got 'cmaes'; expected one of \['random'"),
        (lambda sp: search.create("bo", sp, n_init=-1), r"option 'n_init' of 'bo': got -1; expected an int >= 0$"),
        (lambda sp: search.create("lamcts-bo", sp, leafsize=5), r"option of 'lamcts-bo': got 'leafsize'; expected one of .*leaf_size"),
        (lambda sp: search.create("lamcts-bo", sp, cp=0), r"option 'cp' of 'lamcts-bo': got 0; expected a number > 0$"),
        (lambda sp: search.create("random", sp).ask(0), r"ask n: got 0; expected an int >= 1$"),
        (lambda sp: BoxSpace([1.0], [0.0]), r"box bounds: got .*; expected finite lower < upper in every dimension$"),
        (lambda sp: IntegerSpace([0, 0], [1]), r"integer bounds: got .*; expected lower and upper of the same non-zero length$"),
        (lambda sp: CategoricalSpace([["a", "a"]]), r"categorical choices: got .*; expected distinct choices in every dimension$"),
        (lambda sp: IntegerSpace([0], [3]).restrict([[4]]), r"integer point\[0\]: got 4; expected an int in 0..3$"),
        (lambda sp: BoxSpace([0.0], [1.0]).restrict([[0.5]]), r"pool of a box space: only integer and categorical"),
        (lambda sp: search.create("bo", sp, strict_fit=1), r"option 'strict_fit' of 'bo': got 1; expected true or false$"),
        (lambda sp: search.create("lamcts-bo", sp, output_warp="log"),
         r"option 'output_warp' of 'lamcts-bo': got 'log'; expected one of power, rank, none$"),
        (lambda sp: search.create("bo", sp, acquisition="ucb"),
         r"option 'acquisition' of 'bo': got 'ucb'; expected one of logei, ts$"),
    ],
)
def test_invalid_names_and_options_raise_a_clear_error(call, match):
    with pytest.raises(SearchError, match=match) as info:
        call(BoxSpace([0.0, 0.0], [1.0, 1.0]))
    assert isinstance(info.value, GpunetError) and isinstance(info.value, ValueError)
    assert info.value.field and str(info.value).startswith(info.value.field)


def test_cli_search_bench_json(capsys):
    from gpunet.cli import main

    assert main(["search", "bench", "--problem", "levy20", "--algo", "sobol", "--budget", "8", "--seeds", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["seeds"] == 2 and set(data["summary"]["checkpoints"]) == {"2", "4", "8"}
    assert main(["search", "bench", "--problem", "nb201", "--algo", "random", "--data", "/nonexistent"]) == 2
    assert main(["search", "bench", "--problem", "levy20", "--algo", "nope"]) == 2



@pytest.fixture
def made(monkeypatch) -> list:
    """The searchers that gpunet.search.bench creates, in order."""
    from gpunet.search import bench

    out: list = []

    def create(*args, **kwargs):
        out.append(search.create(*args, **kwargs))
        return out[-1]

    monkeypatch.setattr(bench, "create", create)
    return out


def test_bench_run_records_the_region_fallbacks_of_lamcts(made):
    from gpunet.search import bench
    from gpunet.search.problems import Problem

    space = CategoricalSpace([["a", "b", "c"]] * 4)
    problem = Problem("cat4", space, lambda p: float(sum(v == "b" for v in p)) + 0.1 * float(p[0] == "c"), 4.0)
    lam = bench.run(problem, "lamcts-bo", 8, seed=0)
    assert len(lam["values"]) == 8 and made[-1].name == "lamcts-bo"
    assert isinstance(lam["region_fallbacks"], int) and lam["region_fallbacks"] == made[-1].region_fallbacks
    assert bench.run(problem, "random", 4, seed=0)["region_fallbacks"] is None  # no regions: nothing to count


def test_bench_run_passes_searcher_options_and_refuses_them_for_optuna(made):
    from gpunet.search import bench
    from gpunet.search.problems import Problem

    space = CategoricalSpace([["a", "b", "c"]] * 3)
    problem = Problem("cat3", space, lambda p: float(sum(v == "b" for v in p)), 3.0)
    out = bench.run(problem, "bo", 6, seed=0, options={"output_warp": "rank", "n_init": 3})
    assert out["options"] == {"output_warp": "rank", "n_init": 3} and len(out["values"]) == 6
    assert made[-1].options["output_warp"] == "rank" and made[-1].n_init == 3 and made[-1].options["budget"] == 6
    with pytest.raises(SearchError, match="option 'output_warp' of 'bo': got 'log'"):
        bench.run(problem, "bo", 4, seed=0, options={"output_warp": "log"})
    with pytest.raises(SearchError, match="options: .*expected none for an Optuna sampler"):
        bench.run(problem, "optuna-tpe", 4, seed=0, options={"output_warp": "rank"})
