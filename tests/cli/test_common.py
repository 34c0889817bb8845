"""The CLI's shared helpers and the one-to-one mapping of flags onto the stages' config dataclasses (no task
is loaded: parsing only)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from workbench.cli import adapt, build_parser, deploy, qat, search
from workbench.cli.common import config_from_args, csv_list
from workbench.cli.search import parse_groups


def test_csv_list_parses_and_names_the_bad_value() -> None:
    assert csv_list(int)("2, 4,,8") == (2, 4, 8)
    assert csv_list(str)("a,b") == ("a", "b")
    assert csv_list(int)("") == ()
    with pytest.raises(argparse.ArgumentTypeError, match="'2,x': expected a comma-separated list of int"):
        csv_list(int)("2,x")


def test_config_from_args_maps_names_one_to_one_and_lists_to_tuples() -> None:
    @dataclasses.dataclass
    class Cfg:
        bits: tuple[int, ...] = ()
        seed: int = 0
        name: str = "x"

    args = argparse.Namespace(bits=[2, 4], seed=7, name="ignored")
    cfg = config_from_args(Cfg, args, ("bits", "seed"), name="given")
    assert cfg == Cfg(bits=(2, 4), seed=7, name="given")


def test_parse_groups() -> None:
    assert parse_groups(["a=l1, l2", "b=l3"]) == {"a": ("l1", "l2"), "b": ("l3",)}
    assert parse_groups([]) is None
    with pytest.raises(ValueError, match="expected NAME=layer,layer"):
        parse_groups(["a="])


@pytest.mark.parametrize(
    ("argv", "module", "config_path"),
    [
        (["qat", "--plan", "uniform:w4a8"], qat, "workbench.qat:QATConfig"),
        (["deploy", "--plan", "uniform:w8a8"], deploy, "workbench.hardware.deploy:DeployConfig"),
        (["adapt", "--budget", "0.5"], adapt, "workbench.runtime:RuntimeConfig"),
        (["search"], search, "workbench.search:SearchConfig"),
    ],
)
def test_mapped_flags_are_config_fields_and_parser_destinations(argv, module, config_path) -> None:
    import importlib

    mod, _, name = config_path.partition(":")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(mod), name))}
    args = build_parser().parse_args(argv)
    assert set(module.CONFIG_FLAGS) <= fields
    assert all(hasattr(args, n) for n in module.CONFIG_FLAGS)


def test_renamed_destinations_keep_the_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["profile", "--batches", "3", "--repeats", "5"])
    assert (args.max_batches, args.latency_repeats) == (3, 5)
    assert parser.parse_args(["search", "--study", "s1"]).study_name == "s1"
    assert parser.parse_args(["replicate-hawq", "--data", "x.json"]).data_path == "x.json"
    from workbench.profiling import ProfileConfig

    cfg = config_from_args(ProfileConfig, args, ("max_batches", "layers", "latency_repeats"))
    assert (cfg.max_batches, cfg.latency_repeats, cfg.layers) == (3, 5, "quantizable")
