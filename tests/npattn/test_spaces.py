"""Every registry entry's configuration space (npattn.space): its points are accepted by init and apply (forward
and VJP), its default config is one of them, and hypothesis shrinks towards its smallest point."""
import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import autograd as ag
from npattn import registry
from npattn.space import Bools, Choice, Derived, Ints, Space, contains, image, resolve
from npattn.testing import strategies as nst

WITH_SPACE = [m.name for m in registry.mechanisms() if m.space is not None]
SAMPLES = 6  # per entry: Space.sample seeds 0..5
EXAMPLES = 4  # per entry: hypothesis draws


def _run(case):
    """Forward and a VJP w.r.t. every parameter and every floating input (token ids and padding masks are
    integer and boolean); the output and gradients are finite unless the point asks for NaN rows
    (``masked_rows="nan"``: a fully masked row is NaN by that policy)."""
    floating = [i for i, x in enumerate(case.inputs) if np.dtype(x.dtype).kind == "f"]

    def loss(params, *chosen):
        inputs = list(case.inputs)
        for i, x in zip(floating, chosen):
            inputs[i] = x
        return ag.sum(case.apply(params, *inputs) * case.cotangent)

    argnums = tuple(range(1 + len(floating)))
    grads = ag.grad(loss, argnums=argnums)(case.params, *(case.inputs[i] for i in floating))
    if case.keywords.get("masked_rows") == "nan":
        return
    with ag.no_grad():
        out = ag.to_numpy(case.apply().data)
    assert np.isfinite(out).all(), case
    for grad in [*grads[0].values(), *grads[1:]]:
        if grad is None:                                   # an integer buffer (num_batches_tracked)
            continue
        grad = ag.to_numpy(grad.data if isinstance(grad, ag.Tensor) else grad)
        assert grad.dtype.kind != "f" or np.isfinite(grad).all(), case


def _init_defaults(mech) -> dict:
    parameters = inspect.signature(mech.init).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty}


def _smallest(space: Space):
    """The point of the lower bounds and first choices (None when the constraints reject it)."""
    return resolve(space, lambda value, values: value.bounds(values)[0] if isinstance(value, Ints) else 0)


def test_every_entry_declares_a_space():
    missing = [m.name for m in registry.mechanisms() if m.space is None]
    assert not missing, f"{len(missing)} registry entries declare no configuration space: {', '.join(missing)}"


@pytest.mark.parametrize("name", WITH_SPACE)
def test_sampled_points_run_forward_and_backward(name):
    mech = registry.get(name)
    for seed in range(SAMPLES):
        point = mech.space.sample(np.random.default_rng(seed))
        _run(nst.make_case(mech, point, seed))


@pytest.mark.parametrize("name", WITH_SPACE)
def test_hypothesis_points_run_forward_and_backward(name):
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(nst.cases(name))
    def run(case):
        _run(case)

    run()


@pytest.mark.parametrize("name", WITH_SPACE)
def test_smallest_point_runs(name):
    """The lower bounds and first choices, where the constraints allow them: the edge every shrink ends at."""
    mech = registry.get(name)
    point = _smallest(mech.space)
    if point is None:
        point = mech.space.sample(np.random.default_rng(0))
    _run(nst.make_case(mech, point, 0))


@pytest.mark.parametrize("name", WITH_SPACE)
def test_default_config_lies_in_the_space(name):
    mech = registry.get(name)
    assert contains(mech.space, mech.config, _init_defaults(mech)), (
        f"{name}: the default config {mech.config} is not a configuration of the declared space")


@pytest.mark.parametrize("name", WITH_SPACE)
def test_hypothesis_shrinks_to_the_smallest_point(name):
    mech = registry.get(name)
    smallest = _smallest(mech.space)
    if smallest is None:
        pytest.skip(f"{name}: the constraints reject the lower bounds and first choices")
    # generate and shrink only: the explain phase (which parts of the example matter, for a report) took most
    # of the time and decides nothing here
    found = find(nst.points(name), lambda point: True,
                 settings=settings(database=None, max_examples=50, phases=[Phase.generate, Phase.shrink]))
    assert (found.config, found.dims, found.train) == (smallest.config, smallest.dims, smallest.train)
    assert _same_options(found.options, smallest.options), (found.options, smallest.options)


def _same_options(a: dict, b: dict) -> bool:
    """Equal option dicts, array options (masks, msdeform's level shapes) compared by value."""
    def same(x, y):
        if hasattr(x, "shape") or hasattr(y, "shape"):
            x, y = (np.asarray(ag.to_numpy(z)) if hasattr(z, "shape") else z for z in (x, y))
            return np.shape(x) == np.shape(y) and np.array_equal(x, y)
        return x == y
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


# --- the machinery itself, on a small space


SPACE = Space(config={"reduction": Ints(1, 8), "channels": Ints(lambda v: v.reduction, 32), "bias": Bools(),
                      "k": Choice(None, Ints(1, 4)), "_half": Ints(1, 3), "hidden": Derived(lambda v: 2 * v._half)},
              inputs=image(), where=(lambda v: v.channels // v.reduction >= 1,))


def test_shrinking_finds_the_edge_of_a_failing_region():
    """A property failing at channels >= 2 r ... shrinks to channels = 2, r = 1 and everything else minimal."""
    found = find(nst.points(None, SPACE), lambda p: p.config["channels"] >= 2 * p.config["reduction"] + 3,
                 settings=settings(database=None, max_examples=200))
    assert found.config == {"reduction": 1, "channels": 5, "bias": False, "k": None, "hidden": 2}
    assert found.dims == {"batch": 0, "height": 1, "width": 1} and found.train is False


def test_contains():
    assert contains(SPACE, {"reduction": 4, "channels": 32, "bias": True, "k": 3, "hidden": 6})
    assert contains(SPACE, {"reduction": 4, "channels": 4, "bias": False, "k": None, "hidden": 2})
    assert not contains(SPACE, {"reduction": 4, "channels": 3, "bias": False, "k": None, "hidden": 2})  # C < r
    assert not contains(SPACE, {"reduction": 4, "channels": 33, "bias": False, "k": None, "hidden": 2})  # > hi
    assert not contains(SPACE, {"reduction": 4, "channels": 8, "bias": False, "k": 5, "hidden": 2})  # not a choice
    assert not contains(SPACE, {"reduction": 4, "channels": 8, "bias": False, "k": None, "hidden": 3})  # odd: derived
    assert not contains(SPACE, {"reduction": 4, "channels": 8, "bias": 1, "k": None, "hidden": 2})  # 1 is not False
    assert not contains(SPACE, {"reduction": 4, "channels": 8, "bias": False, "k": None, "hidden": 2, "other": 1})
    # a value the config leaves out must be init's default
    assert contains(SPACE, {"reduction": 4, "channels": 8, "k": None, "hidden": 2}, {"bias": True})
    assert not contains(SPACE, {"reduction": 4, "channels": 8, "k": None, "hidden": 2})
    # constraints on input sizes: some size must satisfy them
    tight = SPACE.require(lambda v: v.height == 10)
    assert not contains(tight, {"reduction": 1, "channels": 8, "bias": False, "k": None, "hidden": 2})


def test_contains_never_admits_a_config_outside_on_the_sampled_path():
    """max_points=0 skips the exhaustive search: the sampled completions must still satisfy everything."""
    no_height = SPACE.require(lambda v: v.height == v.channels)          # SIZE stops at 9: channels 20 has none
    outside = {"reduction": 4, "channels": 20, "bias": False, "k": None, "hidden": 2}
    assert not contains(no_height, outside, max_points=0)
    assert not contains(no_height, outside)                              # exhaustive: the same answer
    odd = {"reduction": 4, "channels": 8, "bias": False, "k": None, "hidden": 3}
    assert not contains(SPACE, odd, max_points=0)                        # a Derived value no draw gives
    some_height = {**outside, "channels": 7}
    assert contains(no_height, some_height, max_points=0)                # found by sampling: height 7
    assert contains(no_height, some_height)


def test_contains_after_the_budget_is_only_no_completion_found():
    """Past max_points and ``samples`` draws, False means that no completion was found, not that none exists."""
    rare = SPACE.require(lambda v: (v.batch, v.height, v.width, v.train) == (3, 9, 9, True))
    member = {"reduction": 1, "channels": 8, "bias": False, "k": None, "hidden": 2}
    assert contains(rare, member)                                        # exhaustive within the default budget
    assert not contains(rare, member, max_points=3, samples=0)


def test_contains_checks_a_derived_option_of_a_choice():
    """Choice(Derived, constant): a target the Derived option cannot produce is refused (not taken as given)."""
    space = Space(config={"_half": Ints(1, 3), "hidden": Choice(Derived(lambda v: 2 * v._half), 7)},
                  inputs=image(1))
    assert contains(space, {"hidden": 4}) and contains(space, {"hidden": 7})
    assert not contains(space, {"hidden": 3}) and not contains(space, {"hidden": 8})
    assert not contains(space, {"hidden": 3}, max_points=0)


def test_contains_prunes_only_on_what_is_drawn():
    """A constraint on input sizes is not judged before they are drawn (reading them then is no refutation)."""
    wide = SPACE.require(lambda v: v.height * v.width > 2 * v.channels + 17)   # H, W <= 9: channels <= 31
    assert contains(wide, {"reduction": 1, "channels": 31, "bias": False, "k": None, "hidden": 2})
    assert not contains(wide, {"reduction": 1, "channels": 32, "bias": False, "k": None, "hidden": 2})


def test_a_name_declared_twice_is_refused():
    with pytest.raises(ValueError, match="width"):
        Space(config={"width": Ints(1, 2)}, inputs=image())


def test_sample_is_deterministic_for_a_seed():
    a = [SPACE.sample(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    b = SPACE.sample(np.random.default_rng(8))
    draws = {repr(SPACE.sample(np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 10 and b.config["channels"] >= b.config["reduction"]


@given(st.data())
def test_points_respect_constraints_and_fixed_values(data):
    point = data.draw(nst.points(None, SPACE, bias=True, train=False))
    assert point.config["channels"] // point.config["reduction"] >= 1
    assert point.config["bias"] is True and point.train is False
    assert point.config["hidden"] % 2 == 0 and "_half" not in point.config
