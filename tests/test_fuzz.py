"""Fuzzing the workbench's input boundaries (hypothesis): QuantSpec fields, plan JSON and shorthands, precision
profile files, and the CLI's arguments.

Every property has the same shape: a *valid* input round-trips exactly (to JSON / a file and back gives an equal
object), and an *invalid* one raises the boundary's named error (:class:`PlanError`, :class:`ProfileError`,
argparse's exit 2 or the CLI's ``error: ...`` line with status 2) whose message names the bad field, value or
file; never a bare TypeError / KeyError / OverflowError / RecursionError from json, pathlib or torch internals.

Examples are derandomized (the ``workbench`` hypothesis profile of ``tests/conftest.py``, restated here) and
kept few, so the file runs in seconds and CI is never red by chance.
"""

from __future__ import annotations

import contextlib
import json
import math
import string
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from torch import nn

from workbench.hardware.profile import (
    COST_MODELS,
    KINDS,
    OPS,
    PRECISIONS,
    PROFILE_DIR,
    PrecisionProfile,
    ProfileError,
    load_profile,
)
from workbench.quant.spec import (
    ACT_GRANULARITIES,
    FLOAT16_FORMATS,
    GRANULARITIES,
    INT_BITS,
    OBSERVERS,
    PRUNE_STRUCTURES,
    VALID_BITS,
    PlanError,
    QuantPlan,
    QuantSpec,
    parse_shorthand,
    split_shorthand,
)

FEW = settings(max_examples=25, deadline=None, derandomize=True)
SOME = settings(max_examples=60, deadline=None, derandomize=True)
MANY = settings(max_examples=150, deadline=None, derandomize=True)

SPEC_FIELDS = tuple(f.name for f in fields(QuantSpec))
SHIPPED = sorted(p.stem for p in PROFILE_DIR.glob("*.json"))

# -- shared strategies -------------------------------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# values JSON can carry beyond the strict standard (Python's json reads NaN / Infinity) and integers too large
# for a float: the numbers most likely to slip past a range check
nasty_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400), -1, -0.5, 0, 1e308])
anything = json_values | nasty_numbers


# ============================================================================================== QuantSpec
@st.composite
def valid_specs(draw, out_channels: int | None = None) -> QuantSpec:
    """Any valid QuantSpec: every field drawn from its valid set, methods and channel_bits kept consistent."""
    granularity = draw(st.sampled_from(GRANULARITIES))
    method = draw(st.sampled_from(("quantize", "prune", "lowrank")))
    sparsity, rank_ratio, channel_bits = 0.0, None, None
    if method == "prune":
        sparsity = draw(st.floats(0.0, 1.0, exclude_max=True))
    elif method == "lowrank":
        rank_ratio = draw(st.floats(0.0, 1.0, exclude_min=True))
    elif granularity != "per_tensor" and draw(st.booleans()):
        n = out_channels if out_channels is not None else draw(st.integers(1, 16))
        channel_bits = tuple(draw(st.lists(st.sampled_from(INT_BITS), min_size=n, max_size=n)))
    return QuantSpec(
        w_bits=draw(st.sampled_from(VALID_BITS)),
        a_bits=draw(st.sampled_from(VALID_BITS)),
        granularity=granularity,
        group_size=draw(st.integers(1, 4096)) if granularity == "per_group" else None,
        w_symmetric=draw(st.booleans()),
        a_symmetric=draw(st.booleans()),
        w_observer=draw(st.sampled_from(OBSERVERS)),
        a_observer=draw(st.sampled_from(OBSERVERS)),
        a_granularity=draw(st.sampled_from(ACT_GRANULARITIES)),
        a_dynamic=draw(st.booleans()),
        percentile=draw(st.floats(50.0, 100.0, exclude_min=True) | st.integers(51, 100)),
        float16_format=draw(st.sampled_from(FLOAT16_FORMATS)),
        channel_bits=channel_bits,
        sparsity=sparsity,
        sparsity_structure=draw(st.sampled_from(PRUNE_STRUCTURES)),
        rank_ratio=rank_ratio,
    )


@SOME
@given(valid_specs())
def test_valid_spec_round_trips_through_dict_and_json(spec):
    d = spec.to_dict()
    assert list(d) == list(SPEC_FIELDS)
    assert QuantSpec.from_dict(d) == spec
    assert QuantSpec.from_dict(json.loads(json.dumps(d))) == spec  # exact: floats survive JSON bit for bit
    assert QuantSpec(**d) == spec


def _not_in(valid):
    return lambda v: not (isinstance(v, (str, int, float)) and not isinstance(v, bool) and v in valid)


_choice_fields = {
    "granularity": GRANULARITIES,
    "a_granularity": ACT_GRANULARITIES,
    "w_observer": OBSERVERS,
    "a_observer": OBSERVERS,
    "float16_format": FLOAT16_FORMATS,
    "sparsity_structure": PRUNE_STRUCTURES,
}


def _outside(lo, hi, *, lo_open, hi_open):
    """Numbers (and NaN, infinities, huge integers) outside the interval lo..hi."""
    below = st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False)
    above = st.floats(min_value=hi, exclude_min=not hi_open, allow_nan=False)
    return below | above | st.sampled_from([math.nan, 10**400, -(10**400)])


not_a_number = (
    st.none() | st.booleans() | st.text(max_size=6) | st.lists(st.integers(), max_size=2) | st.just({})
)


@st.composite
def invalid_fields(draw) -> tuple[dict, str]:
    """(a spec dict that is valid except for one field, that field's name)."""
    name = draw(
        st.sampled_from(
            (
                "w_bits",
                "a_bits",
                *_choice_fields,
                "group_size",
                "group_size_unused",
                "w_symmetric",
                "a_symmetric",
                "a_dynamic",
                "percentile",
                "sparsity",
                "rank_ratio",
                "channel_bits",
                "channel_bits_per_tensor",
            )
        )
    )
    if name in ("w_bits", "a_bits"):
        bad = draw(
            st.integers().filter(lambda b: b not in VALID_BITS)
            | st.sampled_from([7, 1, 64, -3, 0, True, False, "8", None, 8.0, math.nan, 10**400, [8]])
        )
        return {name: bad}, name
    if name in _choice_fields:
        bad = draw((st.text(max_size=12) | anything).filter(_not_in(_choice_fields[name])))
        return {name: bad}, name
    if name == "group_size":
        bad = draw(
            st.integers(max_value=0) | st.sampled_from([True, 8.0, "32", None, math.nan, [32]]) | st.floats()
        )
        return {"granularity": "per_group", "group_size": bad}, "group_size"
    if name == "group_size_unused":
        bad = draw(anything.filter(lambda v: v is not None))
        granularity = draw(st.sampled_from(("per_tensor", "per_channel")))
        return {"granularity": granularity, "group_size": bad}, "group_size"
    if name in ("w_symmetric", "a_symmetric", "a_dynamic"):
        bad = draw(anything.filter(lambda v: not isinstance(v, bool)) | st.sampled_from([0, 1, "true"]))
        return {name: bad}, name
    if name == "percentile":
        bad = draw(_outside(50.0, 100.0, lo_open=True, hi_open=False) | not_a_number)
        return {name: bad}, name
    if name == "sparsity":
        bad = draw(_outside(0.0, 1.0, lo_open=False, hi_open=True) | not_a_number)
        return {name: bad}, name
    if name == "rank_ratio":
        bad = draw(
            (_outside(0.0, 1.0, lo_open=True, hi_open=False) | not_a_number).filter(lambda v: v is not None)
        )
        return {name: bad}, name
    if name == "channel_bits":
        bad = draw(
            st.lists(st.integers().filter(lambda b: b not in INT_BITS), min_size=1, max_size=4)
            | st.lists(
                st.sampled_from([4.0, 4.5, "4", None, True, [4], math.nan, 16, 32]), min_size=1, max_size=4
            )
            | st.sampled_from([[], 4, "44", {"a": 4}, True, 4.0])
        )
        return {"granularity": "per_channel", name: bad}, name
    # channel_bits on a per_tensor spec
    return {"granularity": "per_tensor", "channel_bits": [4, 4]}, "channel_bits"


def _assert_names(err: Exception, *needles: str) -> None:
    msg = str(err)
    assert any(n in msg for n in needles), f"{msg!r} names none of {needles}"


@MANY
@given(invalid_fields())
@example(({"percentile": 10**400}, "percentile"))  # float(10**400) overflows
@example(({"granularity": "per_channel", "channel_bits": 4}, "channel_bits"))  # not iterable
@example(({"granularity": "per_channel", "channel_bits": [1, "x"]}, "channel_bits"))  # unsortable mix
@example(({"granularity": "per_channel", "channel_bits": [[4]]}, "channel_bits"))  # unhashable entry
@example(({"granularity": "per_channel", "channel_bits": [4.0]}, "channel_bits"))  # float: no JSON round trip
def test_invalid_spec_field_raises_plan_error_naming_it(case):
    kw, name = case
    with pytest.raises(PlanError) as err:
        QuantSpec.from_dict(kw)
    _assert_names(err.value, name)
    with pytest.raises(PlanError) as err:
        QuantSpec(**kw)
    _assert_names(err.value, name)


@SOME
@given(
    st.dictionaries(
        st.text(max_size=15).filter(lambda k: k not in SPEC_FIELDS), anything, min_size=1, max_size=3
    )
)
@example({1: 2, "x": 3})  # keys of mixed types (a Python dict, not JSON): the error must still sort them
def test_unknown_spec_keys_raise_plan_error_naming_them(extra):
    with pytest.raises(PlanError, match="unknown spec field") as err:
        QuantSpec.from_dict({"w_bits": 4, **extra})
    for key in extra:
        assert repr(key) in str(err.value)
    with pytest.raises(PlanError, match="unknown spec field"):
        QuantSpec().with_(**{str(k): 0 for k in extra})


@SOME
@given(st.dictionaries(st.sampled_from(SPEC_FIELDS), anything, max_size=6) | anything)
def test_arbitrary_spec_values_give_a_spec_or_plan_error(d):
    """Random JSON in any field (or instead of the whole spec): a valid spec that round-trips, or PlanError."""
    try:
        spec = QuantSpec.from_dict(d)
    except PlanError:
        return
    assert QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# ============================================================================================== plans
class FuzzNet(nn.Module):
    """Two convs, a LayerNorm (not quantizable) and two linears on 1x8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.act = nn.ReLU()
        self.norm = nn.LayerNorm(24)
        self.fc1 = nn.Linear(24, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))  # 6x4x4
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 2), 1)  # 24
        return self.fc2(self.act(self.fc1(self.norm(x))))


MODEL = FuzzNet().eval()
OUT_CHANNELS = {"conv1": 4, "conv2": 6, "fc1": 8, "fc2": 10}
LAYERS = tuple(OUT_CHANNELS)
MODULE_NAMES = {name for name, _ in MODEL.named_modules()}


@st.composite
def valid_plans(draw) -> QuantPlan:
    names = draw(st.lists(st.sampled_from(LAYERS), unique=True, max_size=len(LAYERS)))
    return QuantPlan({n: draw(valid_specs(out_channels=OUT_CHANNELS[n])) for n in names})


@SOME
@given(valid_plans(), st.sampled_from([None, 0, 2]))
def test_valid_plan_round_trips_through_json_and_file(tmp_path_factory, plan, indent):
    plan.validate(MODEL)
    text = plan.to_json(indent=indent)
    assert QuantPlan.from_json(text) == plan
    assert QuantPlan.from_json(text.encode()) == plan
    assert QuantPlan.from_dict(plan.to_dict()) == plan
    assert QuantPlan.from_json(text).to_json(indent=indent) == text
    path = plan.save(tmp_path_factory.getbasetemp() / "fuzz_plan.json", overwrite=True)
    assert QuantPlan.load(path) == plan


@SOME
@given(valid_plans().filter(len), st.data())
def test_truncated_plan_json_raises_plan_error(plan, data):
    text = plan.to_json()
    cut = data.draw(st.integers(0, len(text) - 1))
    with pytest.raises(PlanError, match="not valid JSON"):
        QuantPlan.from_json(text[:cut])


def _check_plan_or_error(load) -> QuantPlan | None:
    """``load()`` gives a plan (which must round-trip, and validate on MODEL or raise PlanError) or PlanError."""
    try:
        plan = load()
    except PlanError:
        event("PlanError")
        return None
    event("plan")
    assert QuantPlan.from_json(plan.to_json()) == plan
    with contextlib.suppress(PlanError):
        plan.validate(MODEL)
    return plan


@SOME
@given(json_values | st.dictionaries(st.sampled_from(LAYERS) | st.text(max_size=6), json_values, max_size=3))
def test_arbitrary_json_is_a_plan_or_plan_error(value):
    _check_plan_or_error(lambda: QuantPlan.from_json(json.dumps(value)))
    _check_plan_or_error(lambda: QuantPlan.from_dict(value))


@SOME
@given(st.text(max_size=40) | st.binary(max_size=40))
@example("[" * 100_000)  # json's parser recurses: RecursionError, not JSONDecodeError
@example(b"\xff\xfe\x00{")  # not UTF-8
@example('{"conv1": {"percentile": 1' + "0" * 400 + "}}")  # an integer too large for a float
@example('{"conv1": {"sparsity": NaN}}')  # Python's json reads NaN
@example('{"conv1": ' + "[" * 980 + "]" * 980 + "}")  # parses, but its repr in the message overflows
def test_arbitrary_text_is_a_plan_or_plan_error(text):
    _check_plan_or_error(lambda: QuantPlan.from_json(text))


@st.composite
def mangled_plans(draw) -> object:
    """A valid plan's dict with its nesting broken: lists for objects, scalars for specs, one level too deep."""
    d = draw(valid_plans().filter(len)).to_dict()
    layer = draw(st.sampled_from(sorted(d)))
    how = draw(st.sampled_from(("list_plan", "list_spec", "scalar_spec", "nested", "items", "empty_name")))
    if how == "list_plan":
        return [d]
    if how == "list_spec":
        return {**d, layer: [d[layer]]}
    if how == "scalar_spec":
        return {**d, layer: draw(json_scalars | nasty_numbers)}
    if how == "nested":
        return {"plan": d} if draw(st.booleans()) else {**d, layer: {layer: d[layer]}}
    if how == "items":
        return list(d.items())
    return {"": d[layer]}


@SOME
@given(mangled_plans())
def test_wrong_nesting_raises_plan_error(value):
    with pytest.raises(PlanError):
        QuantPlan.from_json(json.dumps(value))


@SOME
@given(
    st.text(min_size=1, max_size=20).filter(lambda n: n not in OUT_CHANNELS)
    | st.sampled_from(["norm", "act"]),
    valid_specs(),
)
def test_layer_not_quantizable_in_model_raises_plan_error_naming_it(name, spec):
    plan = QuantPlan({"conv1": QuantSpec(), name: spec})
    with pytest.raises(PlanError) as err:
        plan.validate(MODEL)
    assert repr(name) in str(err.value)
    if name == "norm":
        assert "LayerNorm" in str(err.value) and "supported types" in str(err.value)
    elif name not in MODULE_NAMES:
        assert "valid layers" in str(err.value)


@FEW
@given(st.sampled_from(LAYERS), st.integers(1, 40), st.sampled_from(("per_channel", "per_group")))
def test_channel_bits_of_wrong_length_raise_plan_error_naming_layer(layer, n, granularity):
    if n == OUT_CHANNELS[layer]:
        n += 1
    gs = 4 if granularity == "per_group" else None
    plan = QuantPlan({layer: QuantSpec(granularity=granularity, group_size=gs, channel_bits=(4,) * n)})
    with pytest.raises(PlanError, match=rf"layer '{layer}': channel_bits has {n} entries"):
        plan.validate(MODEL)


def test_plan_constructor_rejects_non_mappings():
    for bad in (5, "conv1", [1, 2], None):
        with pytest.raises(PlanError, match="mapping"):
            QuantPlan(bad)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="must be text"):
        QuantPlan.from_json(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- shorthands
_glob_chars = st.sampled_from(["*", "?", "conv*", "fc?", "*1", "*2", "c*", "f*"])


@st.composite
def valid_shorthands(draw) -> tuple[str, QuantSpec, list[str]]:
    """(shorthand text, the spec it means, the layers it selects)."""
    granularity = draw(st.sampled_from((None, *GRANULARITIES)))
    opts: list[str] = []
    kw: dict = {}
    w = draw(st.sampled_from(VALID_BITS))
    a = draw(st.sampled_from((None, *VALID_BITS)))
    kw["w_bits"], kw["a_bits"] = w, 32 if a is None else a
    bits = f"w{w}" if a is None else f"w{w}a{a}"
    if granularity is not None:
        opts.append(granularity)
        kw["granularity"] = granularity
    if granularity == "per_group" or (granularity is None and draw(st.booleans())):
        g = draw(st.integers(1, 512))
        opts.append(f"g{g}")
        kw["group_size"] = g
        kw.setdefault("granularity", "per_group")
    if draw(st.booleans()):
        sym = draw(st.sampled_from(("sym", "asym")))
        opts.append(sym)
        kw["w_symmetric"] = sym == "sym"
    if draw(st.booleans()):
        obs = draw(st.sampled_from(OBSERVERS))
        opts.append(obs)
        kw["w_observer"] = kw["a_observer"] = obs
    if draw(st.booleans()):
        opts.append("dynamic")
        kw["a_dynamic"] = True
    if draw(st.booleans()):
        f16 = draw(st.sampled_from(("fp16", "bf16")))
        opts.append(f16)
        kw["float16_format"] = "float16" if f16 == "fp16" else "bfloat16"
    method = draw(st.sampled_from((None, "s", "cs", "r")))
    if method is not None:
        value = draw(st.sampled_from((0.1, 0.25, 0.5, 0.75, 0.9)))
        opts.append(f"{method}{value}")
        if method == "r":
            kw["rank_ratio"] = value
        else:
            kw["sparsity"] = value
            kw["sparsity_structure"] = "channel" if method == "cs" else "unstructured"
    opts = draw(st.permutations(opts))
    text = ":".join(["uniform", bits, *opts])
    keep = draw(st.lists(st.sampled_from(LAYERS), min_size=1, unique=True))
    selected = list(LAYERS)
    if draw(st.booleans()):
        text += ";include=" + ",".join(keep)
        selected = [n for n in LAYERS if n in keep]
    others = [n for n in LAYERS if n not in keep]
    if others and draw(st.booleans()):
        drop = draw(st.lists(st.sampled_from(others), min_size=1, unique=True))
        text += ";exclude=" + ",".join(drop)
        selected = [n for n in selected if n not in drop]
    return text, QuantSpec(**kw), selected


@SOME
@given(valid_shorthands())
def test_valid_shorthand_resolves_to_the_plan_it_says(case):
    from workbench.pipeline import resolve_plan

    text, spec, selected = case
    plan = resolve_plan(text, MODEL)
    assert list(plan) == selected
    assert all(s == spec for _, s in plan.items())
    assert parse_shorthand(split_shorthand(text)[0]) == spec
    plan.validate(MODEL)
    assert QuantPlan.from_json(plan.to_json()) == plan


_shorthand_alphabet = string.ascii_lowercase + string.digits + ":;=,.*?[]- _\x00é٣"


@st.composite
def mutated_shorthands(draw) -> str:
    """A valid shorthand with characters deleted, inserted or replaced, or cut short."""
    text = draw(valid_shorthands())[0]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(("delete", "insert", "replace", "cut")))
        ch = draw(st.sampled_from(_shorthand_alphabet))
        if how == "delete":
            text = text[:i] + text[i + 1 :]
        elif how == "insert":
            text = text[:i] + ch + text[i:]
        elif how == "replace":
            text = text[:i] + ch + text[i + 1 :]
        else:
            text = text[:i]
    return text


@MANY
@given(
    mutated_shorthands()
    | st.text(max_size=30)
    | st.text(alphabet=_shorthand_alphabet, max_size=30).map(lambda t: "uniform:" + t)
)
@example("x" * 300)  # longer than a file name may be: OSError from the file system before the fix
@example("uniform:w" + "9" * 5000)  # int() refuses more than 4300 digits
@example("uniform:w4:g" + "9" * 5000)
@example("uniform:w٤a٨")  # non-ASCII digits
@example("uniform:w4;include=[z-a]")  # an empty glob range
@example("uniform:w4;include=conv*;exclude=conv*")  # selects nothing
@example("")
@example(".")  # a directory, not a plan file
def test_random_plan_text_is_a_plan_or_plan_error(text):
    from workbench.pipeline import resolve_plan

    plan = _check_plan_or_error(lambda: resolve_plan(text, MODEL))
    if plan is not None:
        plan.validate(MODEL)


@FEW
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
@example(b"")
@example(b"\xff\xfe\xfd")
def test_random_plan_file_is_a_plan_or_plan_error_naming_the_file(tmp_path_factory, content):
    from workbench.pipeline import resolve_plan

    path = tmp_path_factory.getbasetemp() / "fuzz_plan_file.json"
    path.write_bytes(content)
    try:
        plan = resolve_plan(str(path), MODEL)
    except PlanError as e:
        assert str(path) in str(e)
        return
    assert QuantPlan.from_json(plan.to_json()) == plan
    plan.validate(MODEL)  # resolve_plan checked it against the model


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"nope": {"w_bits": 4}}, r"unknown layer\(s\) \['nope'\]"),
        ({"norm": {"w_bits": 4}}, r"layer 'norm' is a LayerNorm"),
        ({"act": {}}, r"layer 'act' is a ReLU"),
        ({"fc1": {"channel_bits": [4, 4]}}, r"layer 'fc1': channel_bits has 2 entries"),
    ],
)
def test_plan_file_that_does_not_fit_the_model_raises_plan_error(tmp_path, content, needle):
    """Before the fix, ``hardware --estimate --plan FILE`` estimated such plans silently (unknown layers skipped)."""
    from workbench.pipeline import resolve_plan

    path = tmp_path / "plan.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PlanError, match=needle) as err:
        resolve_plan(path, MODEL)
    assert str(path) in str(err.value)


# ============================================================================================== profiles
def _shipped_raw(name: str) -> dict:
    return json.loads((PROFILE_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_round_trips(name, tmp_path):
    prof = load_profile(name)
    d = prof.to_dict()
    assert PrecisionProfile.from_dict(d).to_dict() == d
    assert PrecisionProfile.from_dict(json.loads(prof.to_json())).to_dict() == d
    path = prof.save(tmp_path / f"{name}.json")
    again = load_profile(path)
    assert again.to_dict() == d and again.path == str(path)
    assert again.to_json() == prof.to_json()


def _paths(node, prefix=()):
    """Every (path, value) inside a JSON document, the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield (*prefix, k), v
        yield from _paths(v, (*prefix, k))


def _last_key(path) -> str:
    return next((k for k in reversed(path) if isinstance(k, str)), "")


@st.composite
def mutated_profiles(draw) -> tuple[dict, tuple, str]:
    """(a shipped profile's JSON with one mutation, the path of the mutated node, the mutation)."""
    d = _shipped_raw(draw(st.sampled_from(SHIPPED)))
    paths = [p for p, _ in _paths(d) if not (p[0] == "meta" and len(p) > 1)]  # meta is free-form
    path = draw(st.sampled_from(paths))
    parent = d
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    how = draw(st.sampled_from(("delete", "replace", "rename", "bad_source")))
    if how == "delete" and isinstance(parent, dict):
        del parent[key]
    elif how == "rename" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in parent))] = parent.pop(key)
    elif how == "bad_source" and isinstance(parent, dict) and "source" in parent:
        parent["source"] = draw(st.text(max_size=10).filter(lambda s: s not in d["sources"]))
        path = (*path[:-1], "source")
    else:
        how = "replace"
        parent[key] = draw(anything)
    return d, path, how


@MANY
@given(mutated_profiles())
def test_mutated_profile_loads_or_raises_profile_error_naming_file_and_field(tmp_path_factory, case):
    d, path, how = case
    file = tmp_path_factory.getbasetemp() / "fuzz_profile.json"
    file.write_text(json.dumps(d))
    try:
        prof = load_profile(file)
    except ProfileError as e:
        msg = str(e)
        assert str(file) in msg, msg
        if how in ("replace", "bad_source", "delete"):  # the field (or its id / key) is named
            _assert_names(e, _last_key(path), *(repr(k) for k in path if isinstance(k, str)))
        return
    # the mutation left a valid profile (a changed note, a dropped optional field ...): it round-trips
    again = PrecisionProfile.from_dict(json.loads(prof.to_json()))
    assert again.to_dict() == prof.to_dict()


@SOME
@given(st.sampled_from(SHIPPED), st.data())
def test_truncated_profile_raises_profile_error_naming_file(tmp_path_factory, name, data):
    text = (PROFILE_DIR / f"{name}.json").read_text().rstrip()
    cut = data.draw(st.integers(0, len(text) - 1))
    file = tmp_path_factory.getbasetemp() / "fuzz_truncated.json"
    file.write_text(text[:cut])
    with pytest.raises(ProfileError, match="not valid JSON") as err:
        load_profile(file)
    assert str(file) in str(err.value)


@SOME
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
@example(b"")
@example(b"\xff\xfe\xfd")  # not UTF-8
@example(b"[" * 100_000)  # deeper than json's parser recurses
@example(b'{"name": ' + b"[" * 980 + b"]" * 980 + b"}")  # parses; its repr in the message overflows
@example(b'{"schema_version": true}')
@example(b'{"schema_version": 1, "memory": {"bandwidth_gbps": 1' + b"0" * 400 + b"}}")
def test_random_profile_file_raises_profile_error_naming_file(tmp_path_factory, content):
    file = tmp_path_factory.getbasetemp() / "fuzz_random_profile.json"
    file.write_bytes(content)
    with pytest.raises(ProfileError) as err:
        load_profile(file)
    assert str(file) in str(err.value)


@SOME
@given(st.text(max_size=30))
@example("")  # Path("") is the current directory
@example(".")
@example("/")
@example("x" * 300)  # a name too long for the file system
@example("nvidia_t4")
def test_random_profile_name_is_a_profile_or_profile_error(name):
    try:
        prof = load_profile(name)
    except ProfileError as e:
        assert repr(name) in str(e) or name in str(e)
        return
    assert name in SHIPPED or Path(name).exists()
    assert PrecisionProfile.from_dict(prof.to_dict()).to_dict() == prof.to_dict()


_positive = st.floats(1e-6, 1e18)


@st.composite
def valid_profiles(draw) -> dict:
    """A profile dict built from scratch: random ops and precisions (conv and linear always), figures, sources."""
    sources = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=6),
            st.text(min_size=1, max_size=20).filter(str.strip),
            min_size=1,
            max_size=3,
        )
    )
    src = st.sampled_from(sorted(sources))

    def entry():
        e = {
            "macs_per_s": draw(_positive),
            "overhead_us": draw(st.floats(0, 1e3)),
            "energy_pj_per_mac": draw(st.none() | st.floats(0, 1e3)),
            "source": draw(src),
        }
        if draw(st.booleans()):
            e["note"] = draw(st.text(min_size=1, max_size=10))
        if draw(st.booleans()):
            e["curve"] = sorted(
                draw(st.lists(st.tuples(_positive, _positive).map(list), min_size=2, max_size=4))
            )
        return e

    cost_model = draw(st.sampled_from(COST_MODELS))
    ops = {}
    for op in OPS:
        precs = draw(
            st.lists(st.sampled_from(PRECISIONS), unique=True, min_size=1 if op in ("conv", "linear") else 0)
        )
        if precs or op in ("conv", "linear"):
            ops[op] = {p: entry() for p in precs}
    d = {
        "schema_version": 1,
        "name": draw(st.text(max_size=10)),
        "kind": draw(st.sampled_from(KINDS)),
        "device": draw(st.text(max_size=10)),
        "description": draw(st.text(max_size=10)),
        "cost_model": cost_model,
        "batch_size": draw(st.integers(1, 4096)),
        "memory": {
            "bandwidth_gbps": draw(_positive),
            "energy_pj_per_byte": draw(st.none() | st.floats(0, 1e3)),
            "source": draw(src),
        },
        "ops": ops,
    }
    if draw(st.booleans()):
        d["conversion"] = {
            "elements_per_s": draw(_positive),
            "overhead_us": draw(st.floats(0, 10)),
            "source": draw(src),
        }
    if cost_model == "bit_serial":
        brick = draw(st.sampled_from((2, 4, 8)))
        d["bit_serial"] = {
            "brick_bits": brick,
            "max_bits": draw(st.sampled_from((2, 4, 8))),
            "source": draw(src),
        }
        ops["conv"][f"int{brick}"] = entry()
    if draw(st.booleans()):
        d["meta"] = draw(
            st.dictionaries(st.text(min_size=1, max_size=5), json_values, min_size=1, max_size=3)
        )
    d["sources"] = sources
    return d


@SOME
@given(valid_profiles())
def test_valid_generated_profile_round_trips(tmp_path_factory, d):
    prof = PrecisionProfile.from_dict(d)
    out = prof.to_dict()
    assert PrecisionProfile.from_dict(out).to_dict() == out
    path = prof.save(tmp_path_factory.getbasetemp() / "fuzz_valid_profile.json", overwrite=True)
    assert load_profile(path).to_dict() == out


# ============================================================================================== CLI
class _Accepted(Exception):
    """Raised by the stubbed evaluate_plan: the CLI accepted its arguments and the plan and went on to work."""


def _tiny_task():
    from workbench.tasks import Task

    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)
    ]
    return Task(
        name="fuzz",
        model=FuzzNet().eval(),
        calib_loader=batches,
        val_loader=batches,
        test_loader=batches,
        input_shape=(1, 8, 8),
        num_classes=10,
    )


_cli_values = (
    st.text(alphabet=_shorthand_alphabet, max_size=20).filter(lambda t: not t.startswith("-"))
    | st.sampled_from(
        ["uniform:w8a8", "uniform:w4:per_channel;include=fc*", "0", "-1", "1e9", "nan", "x" * 300]
    )
    | st.integers(-5, 100).map(str)
)


def _argv(
    command: str, options: dict[str, st.SearchStrategy | None], required: tuple[str, ...] = ()
) -> st.SearchStrategy:
    """argv lists for ``command``: the ``required`` options (almost always) and a few others from ``options``
    (None: a flag; else its value strategy), in any order; now and then an option's value is missing or a
    stray token is added."""

    @st.composite
    def build(draw):
        chosen = [o for o in required if draw(st.integers(0, 19))]  # 1 in 20: a required option is left out
        chosen += draw(st.lists(st.sampled_from(sorted(options)), max_size=3))
        argv = [command]
        for opt in draw(st.permutations(chosen)):
            argv.append(opt)
            values = options[opt]
            if values is not None and draw(st.integers(0, 19)):  # 1 in 20: the value is missing
                argv.append(draw(values))
        if not draw(st.integers(0, 9)):
            argv.insert(draw(st.integers(1, len(argv))), draw(_cli_values))
        return argv

    return build()


_task_opts = {
    "--model": st.sampled_from(["digits_cnn", "nope"]) | _cli_values,
    "--dataset": st.sampled_from(["cifar10", "imagefolder", "mnist"]),
    "--no-track": None,
    "--overwrite": None,
    "--device": st.sampled_from(["cpu", "cuda:7", "gpu", "cpu:0", ""]) | _cli_values,
}
# plan files the CLI sandbox writes into its working directory (see cli_sandbox)
PLAN_FILES = {
    "plan_valid.json": json.dumps({"conv1": {"w_bits": 4}, "fc2": {"w_bits": 8, "a_bits": 32}}),
    "plan_unknown.json": json.dumps({"nope": {"w_bits": 4}}),
    "plan_norm.json": json.dumps({"norm": {"w_bits": 4}}),
    "plan_channels.json": json.dumps({"fc1": {"channel_bits": [4, 4]}}),
    "plan_bad_field.json": json.dumps({"fc1": {"w_bits": 7}}),
    "plan_garbage.json": "{not json",
    "plan_empty.json": "",
}
_plans = (
    st.builds(lambda t: t[0], valid_shorthands())
    | mutated_shorthands()
    | st.sampled_from([*PLAN_FILES, "plan_dir.json", "missing.json"])
    | _cli_values
)
QUANTIZE_ARGV = _argv("quantize", {**_task_opts, "--plan": _plans}, required=("--plan", "--no-track"))
_hardware_opts = {
    **_task_opts,
    "--show": st.sampled_from([*SHIPPED, "", ".", "/", "nope.json"]) | _cli_values,
    "--estimate": None,
    "--plan": _plans,
    "--profile": st.sampled_from(SHIPPED) | _cli_values,
    "--batch-size": st.integers(-3, 64).map(str) | _cli_values,
    "--engine": st.sampled_from(["x86", "onednn", "arm"]),
}
HARDWARE_ARGV = _argv("hardware", _hardware_opts) | _argv(
    "hardware", _hardware_opts, required=("--estimate", "--plan", "--no-track")
)


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory):
    """The CLI with a tiny in-memory task for every --model, evaluate_plan stubbed out (a real quantization
    run per example would take seconds), MLflow on a throwaway store and a scratch working directory."""
    import workbench.pipeline

    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("cli_fuzz")
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    mp.chdir(home)
    for name, text in PLAN_FILES.items():
        (home / name).write_text(text)
    (home / "plan_dir.json").mkdir()
    mp.setattr(workbench.pipeline, "make_task", lambda *a, **k: _tiny_task())

    def accepted(task, plan, **kw):
        assert isinstance(plan, QuantPlan)
        plan.validate(task.model)
        raise _Accepted

    mp.setattr(workbench.pipeline, "evaluate_plan", accepted)
    yield home
    mp.undo()


def _run_cli(argv, capsys, *, record: bool = True) -> str:
    """Run ``main(argv)``: it must exit 0, exit 2 printing ``error: ...``, or stop in argparse with status 2."""
    from workbench.cli import main

    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: bad or missing option values (or --help, status 0)
        assert e.code in (0, 2), (argv, e.code)
        outcome = "argparse exit"
    except _Accepted:
        outcome = "accepted (evaluate_plan reached)"
    else:
        err = capsys.readouterr().err
        if rc == 2:
            assert err.strip().splitlines()[-1].startswith("error: "), (argv, err)
            assert "Traceback" not in err
            outcome = "error: exit 2"
        else:
            assert rc == 0, (argv, rc, err)
            outcome = "ok: exit 0"
    if record:  # hypothesis statistics (only inside a hypothesis test)
        event(outcome)
    return outcome


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # capsys is reset by _run_cli per example
)
@given(QUANTIZE_ARGV)
@example(["quantize", "--model", "digits_cnn", "--plan", "uniform:w4a8:per_channel", "--no-track"])
@example(["quantize", "--model", "digits_cnn", "--plan", "x" * 300, "--no-track"])
@example(["quantize", "--model", "digits_cnn", "--plan", ".", "--no-track"])
@example(["quantize", "--model", "digits_cnn", "--plan", "uniform:w7a8", "--no-track"])
def test_cli_quantize_arguments_never_traceback(cli_sandbox, capsys, argv):
    _run_cli(argv, capsys)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # capsys is reset by _run_cli per example
)
@given(HARDWARE_ARGV)
@example(["hardware"])
@example(["hardware", "--show", ""])  # Path("") is the working directory
@example(["hardware", "--show", "/"])
@example(["hardware", "--show", "x" * 300])
@example(["hardware", "--show", "nvidia_t4"])
@example(["hardware", "--estimate", "--plan", "uniform:w8a8", "--profile", "nvidia_t4", "--no-track"])
@example(["hardware", "--estimate", "--plan", "uniform:w8a8", "--profile", "nope", "--no-track"])
@example(["hardware", "--estimate", "--plan", "uniform:w8a8", "--batch-size", "0", "--no-track"])
@example(["hardware", "--estimate", "--plan", "uniform:w8a8", "--batch-size", "-3", "--no-track"])
def test_cli_hardware_arguments_never_traceback(cli_sandbox, capsys, argv):
    _run_cli(argv, capsys)


@pytest.mark.parametrize("where", ["dir", "under_file"])
def test_cli_json_path_that_cannot_be_written_is_reported(cli_sandbox, capsys, tmp_path, where):
    """``--json`` naming a directory (with --overwrite) or a path below a regular file."""
    (tmp_path / "file").write_text("x")
    target = tmp_path if where == "dir" else tmp_path / "file" / "out.json"
    assert (
        _run_cli(["hardware", "--overwrite", "--json", str(target)], capsys, record=False) == "error: exit 2"
    )
