"""The local transformer task under its historical name: everything lives in :mod:`workbench.tasks.digits_bert`.

Kept so that ``from workbench.transformer_task import DigitsBert, transformer_task`` (README, notebooks, bench
scripts, task files) keeps working. Patch the functions where they are looked up:
``workbench.tasks.digits_bert``.
"""

from __future__ import annotations

from workbench.tasks.digits_bert import (
    PAD_ID,
    SEQ_LEN,
    VOCAB,
    BertConfig,
    BertTrainConfig,
    DigitsBert,
    EncoderOutput,
    TokenDataset,
    _cache_path,
    digits_tokens,
    get_digits_bert,
    token_loaders,
    train_digits_bert,
    transformer_task,
)

__all__ = [
    "PAD_ID",
    "SEQ_LEN",
    "VOCAB",
    "BertConfig",
    "BertTrainConfig",
    "DigitsBert",
    "EncoderOutput",
    "TokenDataset",
    "_cache_path",
    "digits_tokens",
    "get_digits_bert",
    "token_loaders",
    "train_digits_bert",
    "transformer_task",
]
