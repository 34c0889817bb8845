import pytest
from torch import nn

from workbench.hardware.kernels import KERNEL_MENU, layer_kind, menu, menu_table, register_kernel


def test_menus_per_layer_kind_in_preference_order():
    assert [h.name for h in menu("linear")] == [
        "fp32", "bf16", "int4_weight_only", "int8_weight_only", "int8_static", "int8_dynamic"
    ]  # fmt: skip
    assert [h.name for h in menu("conv")] == ["fp32", "bf16", "int8_static"]
    assert [h.name for h in menu("embedding")] == ["fp32", "packed_lookup"]
    table = menu_table()
    assert len(table) == len(KERNEL_MENU) == 11
    assert set(table.loc[table["weight_only"], "kernel"]) == {
        "int4_weight_only",
        "int8_weight_only",
        "packed_lookup",
    }


def test_registry_refuses_bad_kinds_and_duplicates():
    with pytest.raises(ValueError, match="kind 'attention' unknown"):
        register_kernel("x", kind="attention", precision="fp32", weight_only=False, order=0, summary="")
    with pytest.raises(ValueError, match="already registered"):
        register_kernel("fp32", kind="linear", precision="fp32", weight_only=False, order=0, summary="")(
            lambda layer, spec: None
        )
    with pytest.raises(ValueError, match="kind 'pool' unknown"):
        menu("pool")


def test_layer_kinds():
    assert layer_kind(nn.Linear(2, 2)) == "linear"
    assert layer_kind(nn.Conv2d(2, 2, 1)) == "conv"
    assert layer_kind(nn.Embedding(4, 2)) == "embedding"
    with pytest.raises(ValueError, match="no kernel menu for a LSTM"):
        layer_kind(nn.LSTM(2, 2))
