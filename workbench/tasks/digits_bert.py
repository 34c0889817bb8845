"""A small BERT-style encoder on the embedded digits data, read as token sequences: the local transformer task.

Each 8x8 digit becomes a sequence of 64 pixel tokens (id = intensity 0..16, plus 1; 0 is padding), the trailing
run of blank pixels is padded away and masked out, so batches are ``{"input_ids", "attention_mask"}`` dicts of
shape ``(B, 64)`` with real masks. :class:`DigitsBert` names its layers as Hugging Face's BertModel does
(``embeddings.word_embeddings``, ``encoder.layer.0.attention.self.query``, ``...intermediate.dense``,
``pooler.dense``), takes keyword inputs and returns an output object with ``logits``, ``last_hidden_state`` and
``pooler_output``: the shape of model most people bring, built from plain torch modules so that nothing is
downloaded. :func:`transformer_task` trains it once (cached under ``data/models``) and wraps it as a Task.

Also importable as :mod:`workbench.transformer_task` (its historical name).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from workbench.data import DigitsConfig, digits_data
from workbench.paths import data_dir
from workbench.tasks.byom import task_from_model
from workbench.tasks.metrics import FIDELITY_KINDS, fidelity_metric
from workbench.tasks.task import Task

__all__ = [
    "PAD_ID",
    "SEQ_LEN",
    "VOCAB",
    "BertConfig",
    "BertTrainConfig",
    "DigitsBert",
    "EncoderOutput",
    "TokenDataset",
    "digits_tokens",
    "get_digits_bert",
    "token_loaders",
    "train_digits_bert",
    "transformer_task",
]

PAD_ID = 0
VOCAB = 18  # padding + 17 pixel intensities
SEQ_LEN = 64


@dataclass(frozen=True)
class BertConfig:
    """Size of :class:`DigitsBert`; the defaults train to about 95 % test accuracy on digits in seconds."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    vocab: int = VOCAB
    max_len: int = SEQ_LEN
    num_classes: int = 10
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        for name in ("hidden", "layers", "heads", "intermediate", "vocab", "max_len", "num_classes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"BertConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")


@dataclass
class EncoderOutput:
    """What :class:`DigitsBert` returns (like transformers' ModelOutput: fields by name)."""

    logits: Tensor
    last_hidden_state: Tensor
    pooler_output: Tensor


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = c.heads, c.hidden // c.heads
        self.query = nn.Linear(c.hidden, c.hidden)
        self.key = nn.Linear(c.hidden, c.hidden)
        self.value = nn.Linear(c.hidden, c.hidden)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        b, n, _ = h.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = self.dropout(scores.softmax(dim=-1))
        return (attn @ v).transpose(1, 2).reshape(b, n, -1)


class _DenseNorm(nn.Module):
    def __init__(self, d_in: int, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class _Attention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c.hidden, c)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(h, mask), h)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden, c.intermediate)

    def forward(self, h: Tensor) -> Tensor:
        return F.gelu(self.dense(h))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c.intermediate, c)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        h = self.attention(h, mask)
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.layers))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        for layer in self.layer:
            h = layer(h, mask)
        return h


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab, c.hidden, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(c.max_len, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None]))


class _Pooler(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden, c.hidden)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # masked mean over the real tokens
        return torch.tanh(self.dense(mean))


class DigitsBert(nn.Module):
    """BERT-style encoder + classifier: ``forward(input_ids, attention_mask=None) -> EncoderOutput``."""

    def __init__(self, config: BertConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else BertConfig()
        self.embeddings = _Embeddings(self.config)
        self.encoder = _Encoder(self.config)
        self.pooler = _Pooler(self.config)
        self.classifier = nn.Linear(self.config.hidden, self.config.num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        mask = (input_ids != PAD_ID) if attention_mask is None else attention_mask.bool()
        h = self.encoder(self.embeddings(input_ids), mask)
        pooled = self.pooler(h, mask)
        return EncoderOutput(logits=self.classifier(pooled), last_hidden_state=h, pooler_output=pooled)


# ---------------------------------------------------------------------------------------------- data


def digits_tokens(x: Tensor, config: DigitsConfig) -> dict[str, Tensor]:
    """Token batches of digits images ``x`` (``(N, 1, 8, 8)``, normalised as ``config`` says): pixel intensity
    + 1 per position, the trailing blank pixels padded (id 0) and masked out."""
    pixels = torch.round((x.reshape(x.shape[0], -1) * config.std + config.mean) * 16).clamp(0, 16).long()
    ids = pixels + 1
    blank = pixels == 0
    # trailing run of blank pixels: positions after the last non-blank one
    last = SEQ_LEN - 1 - torch.flip(~blank, dims=[1]).float().argmax(dim=1)
    last = torch.where((~blank).any(dim=1), last, torch.zeros_like(last))  # an all-blank image keeps 1 token
    keep = torch.arange(SEQ_LEN)[None, :] <= last[:, None]
    ids = torch.where(keep, ids, torch.full_like(ids, PAD_ID))
    return {"input_ids": ids, "attention_mask": keep.long()}


class TokenDataset(Dataset):
    """``({"input_ids", "attention_mask"}, label)`` items; the default collate keeps the dict."""

    def __init__(self, tokens: dict[str, Tensor], labels: Tensor) -> None:
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {k: v[i] for k, v in self.tokens.items()}, self.labels[i]


def token_loaders(*, batch_size: int = 64, seed: int = 0) -> dict[str, DataLoader]:
    """Loaders of every digits split as token batches (calib = the first 256 training samples)."""
    cfg = DigitsConfig(image_size=8, seed=seed, batch_size=batch_size)
    data = digits_data(cfg)
    splits = {
        "train": (data.x_train, data.y_train),
        "calib": (data.x_calib, data.y_calib),
        "val": (data.x_val, data.y_val),
        "test": (data.x_test, data.y_test),
    }
    out = {}
    for name, (x, y) in splits.items():
        ds = TokenDataset(digits_tokens(x, cfg), y)
        g = torch.Generator().manual_seed(seed)
        out[name] = DataLoader(ds, batch_size=batch_size, shuffle=name == "train", generator=g)
    return out


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class BertTrainConfig:
    epochs: int = 40
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0


def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for inputs, y in loader:
            right += int((model(**inputs).logits.argmax(dim=1) == y).sum())
            total += len(y)
    return right / max(total, 1)


def train_digits_bert(
    config: BertConfig | None = None, train: BertTrainConfig | None = None, *, progress: bool = False
) -> tuple[DigitsBert, dict[str, Any]]:
    """Train :class:`DigitsBert` on the digits token sequences (AdamW, cosine schedule); deterministic per seed."""
    config = config if config is not None else BertConfig()
    train = train if train is not None else BertTrainConfig()
    torch.manual_seed(train.seed)
    loaders = token_loaders(seed=train.seed)
    model = DigitsBert(config)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    steps = train.epochs * len(loaders["train"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train.lr, total_steps=steps, pct_start=0.1)
    from tqdm.auto import tqdm

    for _ in tqdm(range(train.epochs), desc="train digits_bert", disable=not progress, leave=False):
        model.train()
        for inputs, y in loaders["train"]:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(**inputs).logits, y).backward()
            opt.step()
            sched.step()
    model.eval()
    info = {
        "val_accuracy": _accuracy(model, loaders["val"]),
        "test_accuracy": _accuracy(model, loaders["test"]),
    }
    return model, info


def _cache_path(config: BertConfig, train: BertTrainConfig) -> Path:
    key = json.dumps({"model": asdict(config), "train": asdict(train), "version": 1}, sort_keys=True)
    return data_dir() / "models" / f"digits_bert-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def get_digits_bert(
    config: BertConfig | None = None, train: BertTrainConfig | None = None, *, progress: bool = False
) -> tuple[DigitsBert, dict[str, Any]]:
    """The trained :class:`DigitsBert`, from ``data/models`` when cached (weights only, loaded safely)."""
    config = config if config is not None else BertConfig()
    train = train if train is not None else BertTrainConfig()
    path = _cache_path(config, train)
    if path.is_file():
        try:  # weights only: a file that would run code is refused; a damaged one is retrained and replaced
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitsBert(config)
            model.load_state_dict(saved["state_dict"])
            return model.eval(), {**saved["info"], "source": "cache", "path": str(path)}
        except Exception as err:
            import warnings

            from workbench.paths import StaleCacheWarning

            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"cached DigitsBert {path} cannot be used ({reason}); retraining and replacing it",
                StaleCacheWarning,
                stacklevel=2,
            )
    model, info = train_digits_bert(config, train, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "info": info}, tmp)
    tmp.replace(path)
    return model, {**info, "source": "trained", "path": str(path)}


def transformer_task(
    *,
    metric: str = "accuracy",
    config: BertConfig | None = None,
    train: BertTrainConfig | None = None,
    progress: bool = False,
) -> Task:
    """The trained :class:`DigitsBert` on digits token batches as a Task (``{"input_ids", "attention_mask"}``
    inputs, labels kept). ``metric``: ``"accuracy"`` (labelled top-1) or a fidelity kind against the FP32
    model's logits (``"cosine"``, ``"min_cosine"``, ``"neg_rel_mse"``, ``"topk_agreement"``)."""
    if metric != "accuracy" and metric not in FIDELITY_KINDS:
        raise ValueError(f"metric={metric!r}; choose 'accuracy' or one of {list(FIDELITY_KINDS)}")
    model, info = get_digits_bert(config, train, progress=progress)
    loaders = token_loaders(seed=(train or BertTrainConfig()).seed)
    task = task_from_model(
        model,
        calib_loader=loaders["calib"],
        val_loader=loaders["val"],
        test_loader=loaders["test"],
        train_loader=loaders["train"],
        metric=None if metric == "accuracy" else fidelity_metric(model, metric),
        name="digits_bert",
        num_classes=10,
    )
    task.info.update({"trained": info, "metric": metric})
    return task
