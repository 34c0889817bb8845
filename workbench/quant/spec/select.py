"""Choosing layers: glob patterns on module paths, and the ``uniform:w4a8...`` plan shorthand."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from workbench.quant.introspect import QUANTIZABLE_TYPES, quantizable_layers
from workbench.quant.spec.layer import GRANULARITIES, OBSERVERS, VALID_BITS, PlanError, QuantSpec, _choices


def _listing(names: list[str], limit: int = 40) -> str:
    """``names`` for an error message, cut after ``limit`` entries (a transformer has hundreds of layers)."""
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} ... and {len(names) - limit} more"


def _nearest(text: str, names: list[str], n: int = 5) -> list[str]:
    """Names closest to ``text`` (a layer name or a glob pattern); the first few names when none is close."""
    bare = text.replace("*", "").replace("?", "").strip(".") or text
    near = difflib.get_close_matches(bare, names, n=n, cutoff=0.4)
    if not near:  # a pattern's tail (``*.dens``) against the names' tails
        tails = {name.rsplit(".", 1)[-1]: name for name in names}
        near = [tails[t] for t in difflib.get_close_matches(bare.rsplit(".", 1)[-1], list(tails), n=n)]
    return near or names[:n]


def _patterns(value: Iterable[str] | str | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    bad = [p for p in items if not isinstance(p, str) or not p.strip()]
    if bad:
        raise PlanError(f"{what} patterns must be non-empty strings (globs on layer names), got {bad!r}")
    return [p.strip() for p in items]


def match_layers(
    names: Iterable[str],
    include: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
) -> list[str]:
    """The ``names`` (module paths, in their order) matched by any ``include`` glob (all names when ``include``
    is None) and by no ``exclude`` glob.

    Patterns are shell globs (:func:`fnmatch.fnmatchcase`, case-sensitive) on the whole module path: ``*``
    matches any run of characters, dots included (``*.dense`` matches ``encoder.layer.0.output.dense``,
    ``pooler*`` matches ``pooler.dense``), ``?`` one character, ``[abc]`` a set. A pattern that matches none of
    ``names`` raises :class:`PlanError` naming it and the nearest names; so does a selection that leaves nothing.
    """
    names = list(names)
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    for what, patterns in (("include", inc), ("exclude", exc)):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                raise PlanError(
                    f"{what} pattern {p!r} matches no quantizable layer; nearest layer names: {_nearest(p, names)} "
                    "(patterns are globs on the whole module path, e.g. '*.dense', 'encoder.*', 'pooler*')"
                )
    selected = [
        n
        for n in names
        if (include is None or any(fnmatch.fnmatchcase(n, p) for p in inc))
        and not any(fnmatch.fnmatchcase(n, p) for p in exc)
    ]
    if not selected:
        raise PlanError(f"include={inc} and exclude={exc} leave no layer selected; layers: {_listing(names)}")
    return selected


def _quantizable_or_raise(model: nn.Module) -> list[str]:
    names = quantizable_layers(model)
    if not names:
        supported = ", ".join(t.__name__ for t in QUANTIZABLE_TYPES)
        raise PlanError(
            f"{type(model).__name__} has no quantizable layers; supported layer types: {supported}"
        )
    return names


# -- shorthand ------------------------------------------------------------------------------------------------
_SHORTHAND = re.compile(r"^w(?P<w>[0-9]+)(?:a(?P<a>[0-9]+))?$")
_SELECTION_KEYS = ("include", "exclude")


def split_shorthand(text: str) -> tuple[str, list[str], list[str]]:
    """``'uniform:w4;include=*.dense,*.query;exclude=pooler*'`` -> ``('uniform:w4', ['*.dense', '*.query'],
    ['pooler*'])``: the spec part and the include / exclude globs of its ``;key=glob[,glob...]`` clauses."""
    spec_text, *clauses = str(text).split(";")
    found: dict[str, list[str]] = {k: [] for k in _SELECTION_KEYS}
    for clause in clauses:
        key, sep, value = clause.partition("=")
        key = key.strip()
        globs = [g.strip() for g in value.split(",")]
        if not sep or key not in found or not all(globs):
            raise PlanError(
                f"clause {clause!r} of {text!r} not understood; valid clauses: ';include=<glob>[,<glob>...]' and "
                "';exclude=<glob>[,<glob>...]', e.g. 'uniform:w4:per_channel;include=*.dense;exclude=pooler*'"
            )
        found[key] += globs
    return spec_text.strip(), found["include"], found["exclude"]


def parse_shorthand(text: str) -> QuantSpec:
    """The spec of a plan shorthand: ``uniform:w4a8:per_channel`` -> QuantSpec(w_bits=4, a_bits=8,
    granularity='per_channel').

    Grammar: ``uniform:<bits>[:<option>...][;include=<glob>,...][;exclude=<glob>,...]``.

    ``<bits>`` is ``w<W>a<A>`` (weights and activations, e.g. ``w4a8``; ``a16`` a 16-bit float cast) or ``w<W>``
    alone, a *weight-only* spec: activations stay float32 (``a_bits=32``, same as ``w<W>a32``).

    Options after the bits, in any order: a granularity (per_tensor, per_channel, per_group), ``g<N>`` (group
    size), ``asym`` / ``sym`` (weights), an observer (minmax, percentile, mse), ``dynamic`` (activation scales per
    batch), ``fp16`` / ``bf16`` (format of 16-bit specs), ``s<F>`` (unstructured pruning at sparsity F, e.g.
    ``s0.5``), ``cs<F>`` (channel pruning), ``r<F>`` (low-rank factorisation at rank ratio F, e.g. ``r0.25``).

    The ``;include=`` / ``;exclude=`` clauses select layers by glob patterns on their module paths (see
    :func:`match_layers`); they need a model, so only :meth:`QuantPlan.from_shorthand` takes them (use
    :func:`split_shorthand` to separate them).
    """
    help_text = (
        "expected 'uniform:w<W>a<A>[:option...]' or weight-only 'uniform:w<W>[:option...]', e.g. 'uniform:w8a8', "
        "'uniform:w4a8:per_channel', 'uniform:w4:per_group:g32', 'uniform:w4a8:per_group:g32:mse'"
    )
    if ";" in str(text):
        raise PlanError(
            f"{text!r} selects layers (';include=' / ';exclude='); that needs a model: use "
            "QuantPlan.from_shorthand(text, model)"
        )
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) < 2 or parts[0] != "uniform":
        raise PlanError(f"plan shorthand {text!r} not understood; {help_text}")
    m = _SHORTHAND.match(parts[1])
    if not m:
        raise PlanError(f"bits part {parts[1]!r} of {text!r} not understood; {help_text}")
    if max(len(m["w"]), len(m["a"] or "")) > 6:  # int() refuses > 4300 digits; no valid width has 7
        raise PlanError(f"bits part {parts[1]!r} of {text!r}: bits must be one of {_choices(VALID_BITS)}")
    kw: dict[str, Any] = {"w_bits": int(m["w"]), "a_bits": int(m["a"]) if m["a"] is not None else 32}
    for opt in parts[2:]:
        if opt in GRANULARITIES:
            kw["granularity"] = opt
        elif re.fullmatch(r"g[0-9]{1,18}", opt):
            kw["group_size"] = int(opt[1:])
        elif opt in ("asym", "sym"):
            kw["w_symmetric"] = opt == "sym"
        elif opt in OBSERVERS:
            kw["w_observer"] = opt
            kw["a_observer"] = opt
        elif opt == "dynamic":
            kw["a_dynamic"] = True
        elif opt in ("fp16", "bf16"):
            kw["float16_format"] = "float16" if opt == "fp16" else "bfloat16"
        elif m_c := re.fullmatch(r"(?P<kind>cs|s|r)(?P<v>[0-9]*\.?[0-9]+)", opt):
            value = float(m_c["v"])
            if m_c["kind"] == "r":
                kw["rank_ratio"] = value
            else:
                kw["sparsity"] = value
                kw["sparsity_structure"] = "channel" if m_c["kind"] == "cs" else "unstructured"
        else:
            valid = [
                *GRANULARITIES,
                "g<N>",
                "asym",
                "sym",
                *OBSERVERS,
                "dynamic",
                "fp16",
                "bf16",
                "s<F>",
                "cs<F>",
                "r<F>",
            ]
            raise PlanError(f"option {opt!r} in {text!r} not understood; valid options: {valid}")
    if kw.get("group_size") is not None and "granularity" not in kw:
        kw["granularity"] = "per_group"
    return QuantSpec(**kw)
