"""Precision profiles: shipped profiles load and cite sources; bad files get named errors."""

from __future__ import annotations

import copy
import json
import math

import pytest

from workbench.hardware.profile import (
    OPS,
    PRECISIONS,
    PrecisionProfile,
    ProfileError,
    available_profiles,
    load_profile,
)

SHIPPED = ("cpu_measured", "nvidia_a100_sxm", "nvidia_t4", "bitfusion", "edge_tpu_int8")


def _minimal() -> dict:
    return {
        "schema_version": 1,
        "name": "toy",
        "kind": "reference",
        "device": "toy device",
        "description": "",
        "cost_model": "table",
        "batch_size": 4,
        "memory": {"bandwidth_gbps": 10.0, "energy_pj_per_byte": 100.0, "source": "s"},
        "ops": {
            "conv": {
                "fp32": {"macs_per_s": 1e9, "overhead_us": 10.0, "energy_pj_per_mac": 4.0, "source": "s"},
                "int8": {"macs_per_s": 4e9, "overhead_us": 10.0, "energy_pj_per_mac": 1.0, "source": "s"},
            },
            "linear": {
                "fp32": {"macs_per_s": 1e9, "overhead_us": 1.0, "energy_pj_per_mac": 4.0, "source": "s"}
            },
        },
        "sources": {"s": "a test source"},
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_cite_every_figure(name):
    prof = load_profile(name)
    assert prof.name == name and name in available_profiles()
    assert prof.memory.bandwidth_gbps > 0 and prof.memory.source in prof.sources
    for op, table in prof.ops.items():
        assert op in OPS
        for precision, cost in table.items():
            assert precision in PRECISIONS
            assert cost.macs_per_s > 0 and cost.source in prof.sources
    # the JSON round-trips exactly
    again = PrecisionProfile.from_dict(json.loads(prof.to_json()))
    assert again.to_dict() == prof.to_dict()


def test_reference_profiles_order_precisions_by_speed():
    t4 = load_profile("nvidia_t4")
    rate = {p: t4.op_cost("conv", p).macs_per_s for p in ("fp32", "fp16", "int8", "int4")}
    assert rate["fp32"] < rate["fp16"] < rate["int8"] < rate["int4"]
    a100 = load_profile("nvidia_a100_sxm")
    assert a100.op_cost("conv", "int8").macs_per_s == pytest.approx(
        2 * a100.op_cost("conv", "bf16").macs_per_s
    )
    assert load_profile("edge_tpu_int8").precisions("conv") == ("int8",)


def test_bit_serial_cost_scales_with_weight_times_activation_bits():
    bf = load_profile("bitfusion")
    base = bf.op_cost("conv", "int2", w_bits=2, a_bits=2).macs_per_s
    assert bf.op_cost("conv", "int8", w_bits=8, a_bits=8).macs_per_s == pytest.approx(base / 16)
    assert bf.op_cost("conv", "int8", w_bits=4, a_bits=8).macs_per_s == pytest.approx(base / 8)
    assert bf.op_cost("conv", "int4", w_bits=2, a_bits=4).macs_per_s == pytest.approx(base / 2)
    e2 = bf.op_cost("conv", "int2").energy_pj_per_mac
    assert bf.op_cost("conv", "int8", w_bits=8, a_bits=8).energy_pj_per_mac == pytest.approx(16 * e2)
    assert set(bf.precisions("conv")) >= {"int2", "int4", "int8"}


def test_measured_cpu_profile_records_how_it_was_measured():
    prof = load_profile("cpu_measured")
    assert prof.kind == "measured"
    assert "python -m workbench hardware --measure" in prof.sources["measured"]
    assert set(prof.precisions("conv")) == {"fp32", "bf16", "int8"}
    for key, fit in prof.meta["fits"].items():
        assert len(fit["points"]) >= 3, key


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("memory"), "missing the required field 'memory'"),
        (lambda d: d["ops"]["conv"].update({"int3": d["ops"]["conv"]["fp32"]}), "unknown precision 'int3'"),
        (lambda d: d["ops"].update({"attention": {}}), "unknown op type 'attention'"),
        (lambda d: d["ops"]["conv"]["fp32"].pop("macs_per_s"), "missing the required field 'macs_per_s'"),
        (lambda d: d["ops"]["conv"]["fp32"].update({"macs_per_s": -1}), "must be > 0"),
        (lambda d: d["ops"]["conv"]["fp32"].update({"macs_per_s": "fast"}), "finite number"),
        (
            lambda d: d["ops"]["conv"]["fp32"].update({"source": "nowhere"}),
            "'nowhere' is not in the profile's sources",
        ),
        (lambda d: d.update({"kind": "guessed"}), "kind='guessed' is not valid"),
        (lambda d: d.update({"cost_model": "magic"}), "cost_model='magic' is not valid"),
        (lambda d: d.update({"schema_version": 9}), "schema_version=9 is not supported"),
        (lambda d: d["ops"].pop("linear"), "needs at least one precision for 'linear'"),
        (lambda d: d.update({"cost_model": "bit_serial"}), "missing the required field 'bit_serial'"),
        (
            lambda d: d["ops"]["conv"]["fp32"].update(
                {"overhead_usec": 3.0}
            ),  # a typo is not silently ignored
            "ops.conv.fp32 has unknown field(s) 'overhead_usec'",
        ),
        (lambda d: d["memory"].update({"bandwidth": 10}), "memory has unknown field(s) 'bandwidth'"),
        (lambda d: d.update({"batchsize": 8}), "unknown field(s) 'batchsize'"),
    ],
)
def test_bad_profiles_name_the_problem(edit, message):
    d = copy.deepcopy(_minimal())
    edit(d)
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrecisionProfile.from_dict(d)


def test_bad_files_and_names(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "missing.json")
    with pytest.raises(ProfileError, match="unknown profile 'tpu9'.*nvidia_t4"):
        load_profile("tpu9")
    prof = PrecisionProfile.from_dict(_minimal())
    with pytest.raises(ProfileError, match="no 'int4' kernel for 'conv'.*'fp32', 'int8'"):
        prof.op_cost("conv", "int4")
    with pytest.raises(ProfileError, match="unknown op type 'pool'"):
        prof.precisions("pool")


def test_save_never_overwrites_silently(tmp_path):
    prof = PrecisionProfile.from_dict(_minimal())
    path = prof.save(tmp_path / "toy.json")
    with pytest.raises(FileExistsError, match="overwrite"):
        prof.save(path)
    assert load_profile(path).to_dict() == prof.to_dict()
    assert math.isclose(load_profile(path).op_cost("conv", "int8").seconds(4e9), 1.0 + 10e-6)


def test_measured_curve_is_interpolated_on_log_log_axes():
    from workbench.hardware.profile import OpCost

    cost = OpCost(macs_per_s=1e9, overhead_us=10.0, source="s", curve=((1e6, 1e-3), (1e8, 1e-2)))
    assert cost.seconds(1e6) == pytest.approx(1e-3) and cost.seconds(1e8) == pytest.approx(1e-2)
    assert cost.seconds(1e7) == pytest.approx(10**-2.5)  # halfway on log-log axes
    assert cost.seconds(2e8) == pytest.approx(1e-2 + 1e8 / 1e9)  # beyond: the fitted rate from the last point
    assert 9.99e-6 <= cost.seconds(1e3) <= 1e-3  # below: never under the fixed overhead
    d = _minimal()
    d["ops"]["conv"]["fp32"]["curve"] = [[1e6, 1e-3], [1e8, 1e-2]]
    assert PrecisionProfile.from_dict(d).op_cost("conv", "fp32").curve == ((1e6, 1e-3), (1e8, 1e-2))
    d["ops"]["conv"]["fp32"]["curve"] = [[1e6, -1.0], [1e8, 1e-2]]
    with pytest.raises(ProfileError, match=r"curve\[0\]\[1\] must be > 0"):
        PrecisionProfile.from_dict(d)


def test_a_profile_file_with_a_duplicate_key_is_refused_naming_it(tmp_path):
    text = json.dumps(_minimal())
    path = tmp_path / "dup.json"
    path.write_text(text.replace('"batch_size": 4', '"batch_size": 4, "batch_size": 64'))
    with pytest.raises(ProfileError, match=f"{path} is ambiguous: the key 'batch_size' appears twice"):
        load_profile(path)
