"""QuantPlan: layer name -> QuantSpec, the unit that moves between every stage; JSON round-trip."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from workbench._common.strict_json import DuplicateKeyError, loads_strict
from workbench.quant.introspect import WEIGHT_ONLY_TYPES, layer_costs, unsupported_reason
from workbench.quant.spec.layer import PlanError, QuantSpec
from workbench.quant.spec.select import (
    _listing,
    _nearest,
    _patterns,
    _quantizable_or_raise,
    match_layers,
    parse_shorthand,
    split_shorthand,
)
from workbench.quant.spec.summary import PlanSummary, summarize


@dataclass(frozen=True)
class QuantPlan:
    """Layer name -> QuantSpec. Layers not in the plan stay float32."""

    layers: Mapping[str, QuantSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, QuantSpec] = {}
        try:
            layers = dict(self.layers)
        except (TypeError, ValueError):
            raise PlanError(
                f"a plan's layers must be a mapping of layer name -> spec, got {type(self.layers).__name__}"
            ) from None
        for name, spec in layers.items():
            if not isinstance(name, str) or not name:
                raise PlanError(f"layer names must be non-empty module paths, got {name!r}")
            if isinstance(spec, Mapping):
                spec = QuantSpec.from_dict(spec)
            if not isinstance(spec, QuantSpec):
                raise PlanError(
                    f"layer {name!r}: expected a QuantSpec or a mapping, got {type(spec).__name__}"
                )
            clean[name] = spec
        object.__setattr__(self, "layers", clean)

    # -- mapping-like access ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> QuantSpec:
        return self.layers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def items(self):
        return self.layers.items()

    def get(self, name: str, default: QuantSpec | None = None) -> QuantSpec | None:
        return self.layers.get(name, default)

    def with_layer(self, name: str, spec: QuantSpec) -> QuantPlan:
        """A new plan with one layer's spec replaced or added."""
        return QuantPlan({**self.layers, name: spec})

    # -- constructors -------------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        model: nn.Module,
        spec: QuantSpec,
        *,
        skip: tuple[str, ...] = (),
        include: Iterable[str] | str | None = None,
        exclude: Iterable[str] | str | None = None,
        embeddings: bool = False,
    ) -> QuantPlan:
        """The same spec for every quantizable layer of ``model`` selected by the glob patterns ``include`` (all
        layers when None) and ``exclude`` (see :func:`match_layers`), except the exact names in ``skip``.

        Embedding tables are in the plan only when asked: ``embeddings=True``, or an ``include`` pattern that
        matches them (``include="*"`` takes every layer); otherwise they stay float32 (named by the coverage
        warning of :func:`~workbench.quant.quantize_model`)."""
        names = _quantizable_or_raise(model)
        unknown = sorted(set(skip) - set(names))
        if unknown:
            raise PlanError(f"skip names unknown layers {unknown}; valid layers: {_listing(names)}")
        selected = match_layers(names, include, exclude)
        if not embeddings:
            inc = [include] if isinstance(include, str) else list(include or ())
            selected = [
                n
                for n in selected
                if not isinstance(model.get_submodule(n), WEIGHT_ONLY_TYPES)
                or any(fnmatch.fnmatchcase(n, p) for p in inc)
            ]
            if not selected:
                raise PlanError(
                    "the selection holds only Embedding tables, which a uniform plan leaves float unless asked: "
                    "pass embeddings=True or an include pattern that names them (e.g. ';include=*')"
                )
        return cls({n: spec for n in selected if n not in skip})

    @classmethod
    def from_shorthand(
        cls,
        text: str,
        model: nn.Module,
        *,
        include: Iterable[str] | str | None = None,
        exclude: Iterable[str] | str | None = None,
        embeddings: bool = False,
    ) -> QuantPlan:
        """A uniform plan from a shorthand (grammar: :func:`parse_shorthand`), e.g. ``uniform:w4a8:per_channel``,
        ``uniform:w4:per_group:g32`` (weight-only) or, with layer selection,
        ``uniform:w4:per_channel;include=*.dense,*.query;exclude=pooler*``. Patterns given here are added to those
        of the text's clauses. Embedding tables only when asked (see :meth:`uniform`): ``;include=*`` takes them."""
        spec_text, inc, exc = split_shorthand(text)
        inc = [*inc, *_patterns(include, "include")]
        exc = [*exc, *_patterns(exclude, "exclude")]
        return cls.uniform(
            model, parse_shorthand(spec_text), include=inc or None, exclude=exc, embeddings=embeddings
        )

    @classmethod
    def from_patterns(
        cls,
        model: nn.Module,
        specs: Mapping[str, QuantSpec | Mapping[str, Any]],
        *,
        exclude: Iterable[str] | str | None = None,
    ) -> QuantPlan:
        """A plan from glob pattern -> spec (``{"*": w8, "*.intermediate.dense": w4, "embeddings.*": w4}``): each
        quantizable layer takes the spec of the *last* pattern that matches it; layers matching no pattern, or
        one of ``exclude``, stay float32. Every pattern must match at least one layer."""
        names = _quantizable_or_raise(model)
        if not isinstance(specs, Mapping) or not specs:
            raise PlanError(f"specs must be a non-empty mapping of glob pattern -> spec, got {specs!r}")
        excluded = set(names) - set(match_layers(names, None, exclude)) if exclude is not None else set()
        layers: dict[str, QuantSpec] = {}
        for pattern, spec in specs.items():
            spec = QuantSpec.from_dict(spec) if isinstance(spec, Mapping) else spec
            if not isinstance(spec, QuantSpec):
                raise PlanError(f"pattern {pattern!r}: expected a QuantSpec or a mapping, got {spec!r}")
            for n in match_layers(names, [pattern], None):
                if n not in excluded:
                    layers[n] = spec
        return cls({n: layers[n] for n in names if n in layers})  # model order

    def select(
        self,
        model: nn.Module,
        *,
        include: Iterable[str] | str | None = None,
        exclude: Iterable[str] | str | None = None,
    ) -> QuantPlan:
        """This plan restricted to the layers selected by the patterns (the others are dropped: float32)."""
        keep = set(match_layers(_quantizable_or_raise(model), include, exclude))
        return QuantPlan({n: s for n, s in self.layers.items() if n in keep})

    # -- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: spec.to_dict() for name, spec in self.layers.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantPlan:
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object of layer -> spec, got {type(d).__name__}")
        return cls({name: QuantSpec.from_dict(spec) for name, spec in d.items()})

    def to_json(self, *, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> QuantPlan:
        if not isinstance(text, (str, bytes, bytearray)):
            raise PlanError(f"a plan's JSON must be text, got {type(text).__name__}")
        try:
            data = loads_strict(text)
        except DuplicateKeyError as e:
            raise PlanError(f"plan JSON is ambiguous: {e}") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from e
        except UnicodeDecodeError as e:
            raise PlanError(f"plan is not valid JSON: not UTF-8 text ({e})") from e
        except RecursionError:
            raise PlanError("plan is not valid JSON: nested too deeply") from None
        try:
            return cls.from_dict(data)
        except RecursionError:  # a deeply nested (valid) JSON value in a spec field: its repr overflows
            raise PlanError("plan JSON is nested too deeply to be a plan (layer -> spec fields)") from None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the plan as JSON; refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> QuantPlan:
        """A plan from a JSON file; a file that cannot be read or is no plan (a duplicate key too) raises
        :class:`PlanError` naming the file (a missing one FileNotFoundError, a directory IsADirectoryError)."""
        path = Path(path)
        try:
            is_file, is_dir = path.is_file(), path.is_dir()
        except (OSError, ValueError):  # a name too long for the file system, ...
            is_file = is_dir = False
        if is_dir:
            raise IsADirectoryError(f"plan file {path} is a directory, not a JSON file")
        if not is_file:
            raise FileNotFoundError(f"plan file {path} does not exist")
        try:
            text = path.read_bytes()
        except OSError as e:
            raise PlanError(f"plan file {path} cannot be read: {e.strerror or e}") from e
        try:
            return cls.from_json(text)
        except PlanError as e:
            raise PlanError(f"plan file {path}: {e}") from e

    # -- validation and summaries -------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Check every layer name exists and is quantizable, and per-channel bit vectors fit the layer.

        A name that is not a module of ``model`` is reported with its nearest layer names; a module of an
        unsupported type (a LayerNorm, a subclass with its own forward ...) with its type and the supported types.
        """
        names = _quantizable_or_raise(model)
        modules = dict(model.named_modules())
        known = set(names)
        wrong_type = [n for n in self.layers if n not in known and n in modules]
        if wrong_type:
            details = "; ".join(f"layer {n!r} is a {unsupported_reason(modules[n])}" for n in wrong_type)
            raise PlanError(f"plan names layer(s) that cannot be quantized: {details}")
        unknown = [n for n in self.layers if n not in known]
        if unknown:
            near = sorted({m for n in unknown for m in _nearest(n, names)})
            raise PlanError(
                f"plan names unknown layer(s) {unknown}; valid layers: {_listing(names)}; nearest: {near}"
            )
        for name, spec in self.layers.items():
            if spec.channel_bits is not None:
                out_ch = modules[name].weight.shape[0]
                if len(spec.channel_bits) != out_ch:
                    raise PlanError(
                        f"layer {name!r}: channel_bits has {len(spec.channel_bits)} entries, "
                        f"the layer has {out_ch} output channels"
                    )

    def summary(self, model: nn.Module, example_input) -> PlanSummary:
        """Average bits, size in bytes (scales, zero points, folded BatchNorm accounted for), BOPs."""
        self.validate(model)
        costs = layer_costs(model, example_input)
        return summarize(self, model, costs)
