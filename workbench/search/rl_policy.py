"""The RL search's policy: :class:`LSTMController`, an LSTM that emits one categorical decision per step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.search.space_config import KNOBS

_START, _UNKNOWN = 0, 1  # embedding rows: start-of-sequence, unobserved previous action


class LSTMController(nn.Module):
    """An LSTM policy over a fixed sequence of categorical decisions.

    ``decisions``: ``(knob, n_choices)`` per step, in the order they are emitted. ``features``: ``(n_steps, 3)``
    per-step unit features (see :func:`unit_features`; zeros when None). Step ``i``'s input is
    ``[embed(previous action) + pos(i), features[i], one_hot(knob_i)]``: the start token / an unobserved
    previous action have their own embedding rows, and a learned step embedding ``pos`` lets the controller
    tell apart units whose stats are equal (measured: without it, and with biased heads, units with a minority
    optimum lock onto a wrong choice far more often). The heads (one per knob type, shared by the units, no
    bias) start at zero, so the initial policy is uniform.
    """

    def __init__(
        self,
        decisions: Sequence[tuple[str, int]],
        features: np.ndarray | torch.Tensor | None = None,
        *,
        hidden: int = 64,
        embed: int = 32,
        knobs: Sequence[str] = KNOBS,
    ) -> None:
        super().__init__()
        self.knobs = tuple(knobs)
        self.decisions = [(str(k), int(n)) for k, n in decisions]
        for k, n in self.decisions:
            if k not in self.knobs:
                raise ValueError(f"unknown knob {k!r}; knobs: {list(self.knobs)}")
            if n < 1:
                raise ValueError(f"decision {k!r} needs at least one choice, got {n}")
        self.hidden = int(hidden)
        self.max_choices: dict[str, int] = {}
        for k, n in self.decisions:
            self.max_choices[k] = max(self.max_choices.get(k, 0), n)
        self.offsets: dict[str, int] = {}
        offset = 2
        for k in self.knobs:
            if k in self.max_choices:
                self.offsets[k] = offset
                offset += self.max_choices[k]
        self.embedding = nn.Embedding(offset, embed)
        self.position = nn.Embedding(max(len(self.decisions), 1), embed)
        self.cell = nn.LSTMCell(embed + 3 + len(self.knobs), self.hidden)
        # no bias: a head is shared by every unit, and a shared bias drags all units towards the majority's
        # choice (measured: it locks units with a minority optimum onto a wrong choice far more often)
        self.heads = nn.ModuleDict(
            {k: nn.Linear(self.hidden, n, bias=False) for k, n in self.max_choices.items()}
        )
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
        n_steps = len(self.decisions)
        feats = (
            torch.zeros(n_steps, 3) if features is None else torch.as_tensor(features, dtype=torch.float32)
        )
        if tuple(feats.shape) != (n_steps, 3):
            raise ValueError(f"features must have shape ({n_steps}, 3), got {tuple(feats.shape)}")
        onehot = torch.zeros(n_steps, len(self.knobs))
        for i, (k, _) in enumerate(self.decisions):
            onehot[i, self.knobs.index(k)] = 1.0
        self.register_buffer("static", torch.cat([feats, onehot], dim=1))

    def forward(
        self, actions: Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Walk the decisions. With ``actions`` (teacher forcing; ``-1`` = unobserved, contributes no log-prob
        and feeds the 'unknown' embedding to the next step) return their log-probability; without, sample.
        Returns ``(actions, sum of log-probs, sum of step entropies)``."""
        if actions is not None and len(actions) != len(self.decisions):
            raise ValueError(f"expected {len(self.decisions)} actions, got {len(actions)}")
        device = self.static.device
        h = torch.zeros(1, self.hidden, device=device)
        c = torch.zeros(1, self.hidden, device=device)
        prev = torch.tensor([_START], device=device)
        log_prob = torch.zeros((), device=device)
        entropy = torch.zeros((), device=device)
        out: list[int] = []
        for i, (knob, n) in enumerate(self.decisions):
            logits, h, c = self.step(i, prev, h, c)
            logp = F.log_softmax(logits, dim=-1)
            entropy = entropy - (logp.exp() * logp).sum()
            if actions is None:
                a = int(torch.multinomial(logp.detach().exp(), 1, generator=generator).item())
            else:
                a = int(actions[i])
                if a >= n:
                    raise ValueError(f"action {a} of step {i} ({knob}) is out of range 0..{n - 1}")
            out.append(a)
            if a >= 0:
                log_prob = log_prob + logp[a]
                prev = torch.tensor([self.offsets[knob] + a], device=device)
            else:
                prev = torch.tensor([_UNKNOWN], device=device)
        return out, log_prob, entropy

    def step(
        self, i: int, prev: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: ``(logits over this step's choices, h, c)`` given the previous action's embedding row."""
        knob, n = self.decisions[i]
        x = torch.cat([self.embedding(prev) + self.position.weight[i : i + 1], self.static[i : i + 1]], dim=1)
        h, c = self.cell(x, (h, c))
        return self.heads[knob](h)[0, :n], h, c  # the mask: choices beyond this step's count are cut off

    def sample(
        self, generator: torch.Generator | None = None
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Sample one action per decision: ``(actions, log_prob sum, entropy sum)``."""
        return self.forward(None, generator)

    def log_prob(self, actions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob sum, entropy sum)`` of given actions (``-1`` = unobserved)."""
        _, lp, ent = self.forward(actions)
        return lp, ent


__all__ = ["LSTMController"]
