"""Model inputs and outputs of any structure: a tensor, a tuple / list, a dict of tensors, a model output object.

Every stage passes the user's batches through as they come (dicts stay dicts, attention masks are kept):

* :func:`split_batch` — one loader batch into ``(inputs, targets)``: a tuple / list batch is always
  ``(inputs, targets, ...)`` (``(inputs,)`` has no targets); a tensor or a dict batch is inputs without targets.
* :func:`call_model` — ``model(x)`` for a tensor, ``model(*x)`` for a tuple / list, ``model(**x)`` for a dict,
  or ``model(x)`` for a dict when the model's forward takes one dict (:func:`takes_one_dict`: detected from its
  signature, or set per model class with :func:`set_forward_style`, as ``task_from_model(forward=...)`` does).
* :func:`move_inputs`, :func:`batch_size`, :func:`take_inputs`, :func:`concat_inputs`, :func:`expand_inputs` —
  device moves, batch size, slicing, concatenation and repetition along dim 0 that keep the structure
  (non-tensor leaves ride along).
* :func:`primary_output` — the one tensor a metric looks at in a model's output (``logits``,
  ``last_hidden_state``, a chosen key, or the first tensor).

A tensor input takes exactly the path it always took (``model(x.to(device))``). Pure torch: this module
imports nothing of the workbench.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FORWARD_STYLES",
    "OutputError",
    "batch_size",
    "call_model",
    "concat_inputs",
    "describe_inputs",
    "expand_inputs",
    "first_tensor",
    "input_tensors",
    "map_inputs",
    "move_inputs",
    "primary_output",
    "set_forward_style",
    "split_batch",
    "take_inputs",
    "takes_one_dict",
]

PRIMARY_KEYS: tuple[str, ...] = ("logits", "last_hidden_state")
"""Output keys / attributes :func:`primary_output` prefers, in order, before taking the first tensor."""


class OutputError(ValueError):
    """A model output without a tensor a metric can use (names the output type and what it holds)."""


# --------------------------------------------------------------------------------------------- structure


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _rebuild_mapping(template: Mapping, items: dict[str, Any]) -> Mapping:
    """``items`` in the container type of ``template`` (a plain dict when that type cannot be rebuilt)."""
    if type(template) is dict:
        return items
    try:
        return type(template)(items)
    except Exception:  # noqa: BLE001 - e.g. a Mapping subclass with another constructor
        return items


def _rebuild_sequence(template: Sequence, items: list[Any]) -> Sequence:
    if _is_namedtuple(template):
        return type(template)(*items)
    if isinstance(template, tuple):
        return tuple(items)
    return items


def map_inputs(inputs: Any, fn: Callable[[Tensor], Any]) -> Any:
    """``inputs`` with ``fn`` applied to every tensor leaf (recursing into dicts, tuples and lists); other
    leaves are kept as they are. Dicts stay dicts (in their key order), tuples stay tuples."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return _rebuild_mapping(inputs, {k: map_inputs(v, fn) for k, v in inputs.items()})
    if isinstance(inputs, (tuple, list)):
        return _rebuild_sequence(inputs, [map_inputs(v, fn) for v in inputs])
    return inputs


def input_tensors(inputs: Any, prefix: str = "") -> list[tuple[str, Tensor]]:
    """Every tensor leaf of ``inputs`` with its path (``""`` for a bare tensor, ``"attention_mask"``,
    ``"0"``, ``"0.input_ids"``), depth first in order."""
    if isinstance(inputs, Tensor):
        return [(prefix, inputs)]
    out: list[tuple[str, Tensor]] = []
    if isinstance(inputs, Mapping):
        for k, v in inputs.items():
            out += input_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(inputs, (tuple, list)):
        for i, v in enumerate(inputs):
            out += input_tensors(v, f"{prefix}.{i}" if prefix else str(i))
    return out


def first_tensor(inputs: Any) -> Tensor | None:
    """The first tensor leaf of ``inputs`` (depth first), or None."""
    found = input_tensors(inputs)
    return found[0][1] if found else None


def describe_inputs(inputs: Any) -> str:
    """A short description of an input structure for error messages: ``dict(input_ids: int64[4, 16], ...)``."""

    def leaf(t: Tensor) -> str:
        return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"

    if isinstance(inputs, Tensor):
        return f"tensor {leaf(inputs)}"
    if isinstance(inputs, Mapping):
        parts = [f"{k}: {_describe_leaf(v, leaf)}" for k, v in inputs.items()]
        return f"{type(inputs).__name__}({', '.join(parts)})"
    if isinstance(inputs, (tuple, list)):
        parts = [_describe_leaf(v, leaf) for v in inputs]
        return f"{type(inputs).__name__}({', '.join(parts)})"
    return type(inputs).__name__


def _describe_leaf(value: Any, leaf: Callable[[Tensor], str]) -> str:
    if isinstance(value, Tensor):
        return leaf(value)
    if isinstance(value, (Mapping, tuple, list)):
        return describe_inputs(value)
    return type(value).__name__


# --------------------------------------------------------------------------------------------- batches


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one loader batch; ``targets`` is None when the batch has none.

    A tuple / list batch is ``(inputs, targets, ...)`` (its first element is the model input, whatever its
    structure; ``(inputs,)`` has no targets). A tensor or a dict (any Mapping) batch is the model input itself,
    without targets. Anything else raises ValueError naming its type.
    """
    if isinstance(batch, (Tensor, Mapping)):
        return batch, None
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("got an empty batch (an empty tuple / list); batches are (inputs, targets)")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise ValueError(
        f"batches must be tensors, dicts of tensors or (inputs, targets) tuples, got a {type(batch).__name__}"
    )


FORWARD_STYLES: tuple[str, ...] = ("auto", "kwargs", "dict")
"""How a dict input reaches a model: ``kwargs`` ``model(**x)``, ``dict`` ``model(x)`` (one dict argument, e.g.
a sentence-transformers model), ``auto`` decided from the forward's signature (:func:`takes_one_dict`)."""

_STYLE_BY_CLASS: dict[type, str] = {}


def set_forward_style(model_class: type, style: str) -> None:
    """How :func:`call_model` passes a dict to models of ``model_class`` (one of :data:`FORWARD_STYLES`;
    ``auto`` forgets an earlier choice). Set per class, so that copies of a model (quantized ones included) are
    called alike."""
    if style not in FORWARD_STYLES:
        raise ValueError(f"forward style must be one of {list(FORWARD_STYLES)}, got {style!r}")
    if not isinstance(model_class, type):
        raise TypeError(f"set_forward_style takes a model class, got a {type(model_class).__name__}")
    if style == "auto":
        _STYLE_BY_CLASS.pop(model_class, None)
    else:
        _STYLE_BY_CLASS[model_class] = style


@functools.lru_cache(maxsize=512)
def _misses_positional(fn: Callable[..., Any], keys: frozenset[str], skip: int) -> bool:
    """True when ``fn`` (its first ``skip`` parameters left out) has exactly one required positional parameter
    and it is not named in ``keys``: a forward taking the dict itself."""
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):  # no signature (a builtin): keyword arguments as always
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    return len(required) == 1 and required[0].name not in keys


def takes_one_dict(model: nn.Module | Callable[..., Any], inputs: Mapping) -> bool:
    """True when ``model`` is to be called with the dict ``inputs`` itself (``model(x)``), not with its items as
    keyword arguments: its class's style set by :func:`set_forward_style`, else detected: its forward has one
    required positional parameter, and it is not one of the dict's keys (``forward(self, features, **kwargs)``).
    """
    style = _STYLE_BY_CLASS.get(type(model))
    if style is not None:
        return style == "dict"
    keys = frozenset(k for k in inputs if isinstance(k, str))
    if isinstance(model, nn.Module) and "forward" not in vars(model):
        return _misses_positional(type(model).forward, keys, 1)  # the class's function: no model kept alive
    fn = model.forward if isinstance(model, nn.Module) else model
    return _misses_positional.__wrapped__(fn, keys, 0)


def call_model(model: nn.Module | Callable[..., Any], inputs: Any) -> Any:
    """Run ``model`` on one batch of inputs: ``model(x)`` for a tensor, ``model(*x)`` for a tuple / list,
    ``model(**x)`` for a dict (any Mapping with string keys), or ``model(x)`` for a dict when the model takes one
    dict (:func:`takes_one_dict`)."""
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(inputs) if takes_one_dict(model, inputs) else model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise TypeError(
        f"model inputs must be a tensor, a tuple / list of positional arguments or a dict of keyword "
        f"arguments, got a {type(inputs).__name__}"
    )


def move_inputs(inputs: Any, device: torch.device | str) -> Any:
    """``inputs`` with every tensor moved to ``device`` (structure kept; non-tensor leaves untouched)."""
    return map_inputs(inputs, lambda t: t.to(device))


def batch_size(inputs: Any) -> int:
    """Batch size of ``inputs``: the first dimension of its first tensor."""
    t = first_tensor(inputs)
    if t is None:
        raise ValueError(f"inputs hold no tensor, so no batch size: {describe_inputs(inputs)}")
    if t.dim() == 0:
        raise ValueError(f"inputs need a batch dimension, got a 0-d tensor first: {describe_inputs(inputs)}")
    return int(t.shape[0])


def take_inputs(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of ``inputs``: every tensor with a batch dimension sliced ``[:n]``."""
    return map_inputs(inputs, lambda t: t[:n] if t.dim() > 0 else t)


def expand_inputs(inputs: Any, n: int) -> Any:
    """A batch of ``n`` copies of the first sample of ``inputs`` (contiguous; for timing at a batch size)."""
    return map_inputs(inputs, lambda t: t[:1].expand(n, *t.shape[1:]).contiguous() if t.dim() > 0 else t)


def concat_inputs(parts: Sequence[Any]) -> Any:
    """Batches of the same structure concatenated along dim 0 (non-tensor leaves are taken from the first)."""
    if not parts:
        raise ValueError("concat_inputs needs at least one batch")
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, Tensor):
        if not all(isinstance(p, Tensor) for p in parts):
            raise ValueError(f"cannot concatenate batches of different structure: {_types(parts)}")
        return torch.cat(list(parts))
    if isinstance(first, Mapping):
        keys = list(first.keys())
        for p in parts[1:]:
            if not isinstance(p, Mapping) or list(p.keys()) != keys:
                found = list(p.keys()) if isinstance(p, Mapping) else type(p).__name__
                raise ValueError(f"cannot concatenate batches with different keys: {keys} and {found}")
        return _rebuild_mapping(first, {k: concat_inputs([p[k] for p in parts]) for k in keys})
    if isinstance(first, (tuple, list)):
        for p in parts[1:]:
            if not isinstance(p, (tuple, list)) or len(p) != len(first):
                raise ValueError(f"cannot concatenate batches of different structure: {_types(parts)}")
        return _rebuild_sequence(first, [concat_inputs([p[i] for p in parts]) for i in range(len(first))])
    return first


def _types(parts: Sequence[Any]) -> list[str]:
    return [type(p).__name__ for p in parts]


# --------------------------------------------------------------------------------------------- outputs


def _fields(out: Any) -> dict[str, Any]:
    """Named fields of a dataclass-like output object (a dataclass, or an object with public attributes)."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return {f.name: getattr(out, f.name, None) for f in dataclasses.fields(out)}
    if _is_namedtuple(out):
        return dict(zip(out._fields, out))
    try:
        return {k: v for k, v in vars(out).items() if not k.startswith("_")}
    except TypeError:
        return {}


def _found(out: Any) -> str:
    if isinstance(out, Mapping):
        return f"keys {[str(k) for k in out]}"
    if isinstance(out, (tuple, list)) and not _is_namedtuple(out):
        return f"elements {[type(v).__name__ for v in out]}"
    names = list(_fields(out))
    return f"fields {names}" if names else "no keys or fields"


def primary_output(out: Any, *, key: str | int | None = None) -> Tensor:
    """The tensor of a model output that a metric uses.

    * a tensor: itself;
    * ``key`` given: ``out[key]`` of a Mapping or a tuple / list (an int index), or attribute ``key``;
    * a Mapping (e.g. a dict, a ``transformers`` ``ModelOutput``): ``out["logits"]``, else
      ``out["last_hidden_state"]``, else its first tensor value;
    * a tuple / list: its first tensor element (looking into nested tuples / dicts depth first);
    * another (dataclass-like) object: ``.logits``, else ``.last_hidden_state``, else its first tensor field.

    Raises :class:`OutputError` naming the output type and the keys / fields found when none is a tensor.
    """
    if isinstance(out, Tensor):
        return out
    name = type(out).__name__
    if key is not None:
        value: Any = None
        try:
            if isinstance(out, Mapping) or (isinstance(out, (tuple, list)) and isinstance(key, int)):
                value = out[key]  # type: ignore[index]
            else:
                value = getattr(out, str(key))
        except (KeyError, IndexError, AttributeError, TypeError):
            raise OutputError(f"model output ({name}) has no {key!r}; found {_found(out)}") from None
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (Mapping, tuple, list)) or _fields(value):
            return primary_output(value)
        raise OutputError(
            f"model output ({name})[{key!r}] is a {type(value).__name__}, not a tensor; found {_found(out)}"
        )
    if isinstance(out, Mapping):
        for k in PRIMARY_KEYS:
            if isinstance(out.get(k), Tensor):
                return out[k]
        candidates = list(out.values())
    elif isinstance(out, (tuple, list)) and not _is_namedtuple(out):
        candidates = list(out)
    else:
        fields = _fields(out)
        for k in PRIMARY_KEYS:
            if isinstance(fields.get(k, getattr(out, k, None)), Tensor):
                return getattr(out, k)
        candidates = list(fields.values())
    for value in candidates:
        if isinstance(value, Tensor):
            return value
    for value in candidates:  # nested containers, depth first
        if isinstance(value, (Mapping, tuple, list)):
            try:
                return primary_output(value)
            except OutputError:
                continue
    raise OutputError(
        f"model output of type {name} has no tensor a metric can use; found {_found(out)}. Return a tensor, "
        "a dict / tuple holding one, or an object with .logits or .last_hidden_state (or choose one with "
        "output_key=...)"
    )
