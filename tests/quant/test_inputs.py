"""Inputs and outputs of any structure: calling, moving, slicing, concatenating, picking the primary output."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from workbench.quant.inputs import (
    OutputError,
    batch_size,
    call_model,
    concat_inputs,
    describe_inputs,
    expand_inputs,
    input_tensors,
    move_inputs,
    primary_output,
    split_batch,
    take_inputs,
)


class Keywords(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids.float() * attention_mask


class Positional(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b


def _ids(n: int = 3, t: int = 4) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.arange(n * t).reshape(n, t),
        "attention_mask": (torch.arange(t) < 3).float().expand(n, t).contiguous(),
    }


def test_call_model_tensor_tuple_dict() -> None:
    x = torch.randn(2, 3)
    lin = nn.Linear(3, 2)
    assert torch.equal(call_model(lin, x), lin(x))
    a, b = torch.ones(2, 2), torch.full((2, 2), 3.0)
    assert torch.equal(call_model(Positional(), (a, b)), a - b)
    assert torch.equal(call_model(Positional(), [b, a]), b - a)
    batch = _ids()
    out = call_model(Keywords(), batch)
    assert torch.equal(out, batch["input_ids"].float() * batch["attention_mask"])
    assert float(out[0, 3]) == 0.0  # the mask was passed and used
    with pytest.raises(TypeError, match="str"):
        call_model(lin, "tokens")


def test_split_batch() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert split_batch((x, y)) == (x, y)
    assert split_batch([x, y, "extra"])[1] is y
    assert split_batch((x,)) == (x, None)
    assert split_batch(x) == (x, None)
    d = _ids()
    inputs, targets = split_batch(d)
    assert inputs is d and targets is None
    inputs, targets = split_batch((d, y))
    assert inputs is d and targets is y
    with pytest.raises(ValueError, match="int"):
        split_batch(3)
    with pytest.raises(ValueError, match="empty"):
        split_batch(())


def test_move_inputs_keeps_structure_and_masks() -> None:
    d = _ids()
    moved = move_inputs(d, torch.device("cpu"))
    assert type(moved) is dict and list(moved) == ["input_ids", "attention_mask"]
    assert torch.equal(moved["attention_mask"], d["attention_mask"])
    x = torch.randn(2, 3)
    assert move_inputs(x, "cpu") is x  # a tensor takes exactly the old x.to(device) path
    Pair = namedtuple("Pair", "a b")
    nested = move_inputs((Pair(x, 1), [d, "text"]), "cpu")
    assert isinstance(nested[0], Pair) and nested[0].b == 1 and nested[1][1] == "text"
    ordered = move_inputs(OrderedDict(b=x, a=x), "cpu")
    assert isinstance(ordered, OrderedDict) and list(ordered) == ["b", "a"]
    assert moved["input_ids"].dtype == torch.int64  # dtypes are kept (token ids stay integers)


def test_batch_size_take_concat_expand() -> None:
    d = _ids(5)
    assert batch_size(d) == 5
    assert batch_size((torch.zeros(7, 2), torch.zeros(3))) == 7
    assert batch_size(torch.zeros(4)) == 4
    with pytest.raises(ValueError, match="no tensor"):
        batch_size({"text": "hello"})
    with pytest.raises(ValueError, match="batch dimension"):
        batch_size(torch.tensor(3.0))

    first2 = take_inputs(d, 2)
    assert first2["input_ids"].shape == (2, 4) and torch.equal(first2["input_ids"], d["input_ids"][:2])
    x = torch.randn(6, 3)
    assert torch.equal(take_inputs(x, 4), x[:4])

    parts = [take_inputs(d, 2), {k: v[2:] for k, v in d.items()}]
    whole = concat_inputs(parts)
    assert list(whole) == list(d) and all(torch.equal(whole[k], d[k]) for k in d)
    assert torch.equal(concat_inputs([x[:2], x[2:]]), x)
    a, b = concat_inputs([(x[:1], x[:1] * 2), (x[1:3], x[1:3] * 2)])
    assert torch.equal(a, x[:3]) and torch.equal(b, 2 * x[:3])
    assert concat_inputs([d]) is d
    with pytest.raises(ValueError, match="different keys"):
        concat_inputs([d, {"input_ids": d["input_ids"]}])
    with pytest.raises(ValueError, match="at least one"):
        concat_inputs([])

    e = expand_inputs(d, 3)
    assert e["input_ids"].shape == (3, 4) and torch.equal(e["input_ids"][2], d["input_ids"][0])
    assert e["input_ids"].is_contiguous()
    xe = expand_inputs(x, 5)
    assert torch.equal(xe, x[:1].expand(5, 3).contiguous())


def test_input_tensors_and_describe() -> None:
    d = _ids(2)
    assert [p for p, _ in input_tensors(d)] == ["input_ids", "attention_mask"]
    assert [p for p, _ in input_tensors((d, torch.zeros(1)))] == ["0.input_ids", "0.attention_mask", "1"]
    text = describe_inputs(d)
    assert "input_ids: int64[2, 4]" in text and "attention_mask: float32[2, 4]" in text
    assert describe_inputs(torch.zeros(2, 3)) == "tensor float32[2, 3]"


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None


@dataclass
class Scores:
    loss: float
    scores: torch.Tensor


class FakeModelOutput(OrderedDict):
    """Like ``transformers.utils.ModelOutput``: a dict whose keys are also attributes."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def test_primary_output() -> None:
    t = torch.randn(2, 3)
    h = torch.randn(2, 4, 8)
    assert primary_output(t) is t
    assert primary_output({"hidden": h, "logits": t}) is t  # logits preferred
    assert primary_output({"hidden": h, "other": t}) is h  # else the first tensor value
    assert primary_output({"hidden": h, "other": t}, key="other") is t
    assert primary_output((None, t, h)) is t
    assert primary_output(((t, h), None)) is t  # nested, depth first
    assert primary_output((t, h), key=1) is h
    assert primary_output(EncoderOutput(h, t)) is h
    assert primary_output(EncoderOutput(h, t), key="pooler_output") is t
    assert primary_output(Scores(0.5, t)) is t  # first tensor field
    hf = FakeModelOutput(last_hidden_state=h, pooler_output=t)
    assert primary_output(hf) is h
    assert primary_output(FakeModelOutput(loss=torch.tensor(1.0), logits=t)) is t


def test_primary_output_errors_name_type_and_keys() -> None:
    with pytest.raises(OutputError, match=r"dict.*keys \['loss', 'n'\]"):
        primary_output({"loss": 1.0, "n": 3})
    with pytest.raises(OutputError, match=r"Scores has no tensor.*fields \['loss', 'scores'\]"):
        primary_output(Scores(0.5, None))  # type: ignore[arg-type]
    with pytest.raises(OutputError, match="has no 'logits'.*keys"):
        primary_output({"hidden": torch.zeros(1)}, key="logits")
    with pytest.raises(OutputError, match="str"):
        primary_output("done")
    with pytest.raises(ValueError):  # OutputError is a ValueError: the CLI reports it with exit code 2
        primary_output(None)
