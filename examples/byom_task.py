"""Bring your own model: a task file that every workbench stage runs on through the same CLI.

    python -m workbench profile     --task examples/byom_task.py:make_task
    python -m workbench quantize    --task examples/byom_task.py:make_task --plan "uniform:w4:per_channel;exclude=pooler*"
    python -m workbench deploy      --task examples/byom_task.py:make_task --plan uniform:w8:per_channel

A task file is plain Python: a function (``make_task`` unless you name another after the colon) that takes no
arguments and returns a :class:`workbench.tasks.Task`, built here by ``task_from_model``. Copy this file and
replace the two marked blocks: your model, and your data loaders.

This copy runs as it is: the model is a small BERT-style encoder with Hugging Face's layer names
(``embeddings.word_embeddings``, ``encoder.layer.0.attention.self.query``, ``...intermediate.dense``,
``pooler.dense``, ``classifier``), trained on the digits read as 64-token sequences. Nothing is downloaded: it
is trained once (minutes on a CPU) and cached under ``data/models``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.tasks import Task, fidelity_metric, task_from_model


def load_model() -> nn.Module:
    """The FP32 model to quantize, in eval mode. Its forward takes the loaders' inputs: ``model(**batch)`` for a
    dict of tensors, ``model(x)`` for a tensor, ``model(*x)`` for a tuple."""
    # ---- your model goes here ---------------------------------------------------------------------------
    # With Hugging Face transformers (pip install transformers), for instance:
    #
    #     from transformers import BertForSequenceClassification
    #     model = BertForSequenceClassification.from_pretrained("path/to/your/checkpoint")
    #     return model.eval()
    #
    # Outputs may be a tensor, a tuple, a dict or an output object: stages use ``.logits`` (or the first
    # tensor). Layers are named by module path; in BertForSequenceClassification they sit under ``bert.``
    # (``bert.encoder.layer.0.attention.self.query``, ``bert.pooler.dense``), so patterns such as
    # ``exclude=*pooler*`` match both that model and this one.
    # -------------------------------------------------------------------------------------------------------
    from workbench.transformer_task import get_digits_bert

    model, _info = get_digits_bert()  # trained once, then loaded from data/models
    return model.eval()


def load_loaders() -> dict[str, DataLoader]:
    """DataLoaders of every split. A batch is ``(inputs, labels)`` or the inputs alone; inputs here are dicts
    ``{"input_ids": int64[B, 64], "attention_mask": int64[B, 64]}`` passed as ``model(**inputs)``."""
    # ---- your data goes here ----------------------------------------------------------------------------
    # With a tokenizer, for instance (texts: a list of strings, labels: a list of ints):
    #
    #     from transformers import AutoTokenizer
    #     tok = AutoTokenizer.from_pretrained("path/to/your/checkpoint")
    #     enc = tok(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    #     items = [({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}, labels[i])
    #              for i in range(len(texts))]
    #     loader = DataLoader(items, batch_size=32)   # the default collate stacks the dicts
    #
    # calib: a few hundred samples for activation ranges and sensitivity probes; val: what a search scores plans
    # on; test: the final figures; train (optional, with labels): QAT. Labels are optional for every stage
    # but QAT when the metric is a fidelity metric (below).
    # -------------------------------------------------------------------------------------------------------
    from workbench.transformer_task import token_loaders

    return token_loaders(
        batch_size=64
    )  # {"train", "calib", "val", "test"} of ({input_ids, attention_mask}, y)


def make_task() -> Task:
    """The task the CLI runs on: ``--task examples/byom_task.py:make_task``."""
    torch.manual_seed(0)
    model = load_model()
    loaders = load_loaders()
    return task_from_model(
        model,
        calib_loader=loaders["calib"],
        val_loader=loaders["val"],
        test_loader=loaders["test"],
        train_loader=loaders["train"],  # optional: QAT needs it
        # The score, higher is better. A fidelity metric needs no labels: the mean cosine similarity of the
        # quantized model's logits to the FP32 model's on the same batches (1.0 = identical). Leave metric out
        # for labelled top-1 accuracy, or pass eval_fn= (see make_task_eval_fn below).
        metric=fidelity_metric(model, "cosine"),
        name="digits_bert",
    )


def make_task_eval_fn() -> Task:
    """The same model scored by a function of your own, ``eval_fn(model) -> float`` (higher is better), e.g.
    a benchmark harness: ``--task examples/byom_task.py:make_task_eval_fn``. The function brings its own data, so
    it scores every split alike; the loaders still feed calibration, sensitivity probes and QAT."""
    model = load_model()
    loaders = load_loaders()

    @torch.no_grad()
    def val_accuracy(m: nn.Module) -> float:
        right = total = 0
        for inputs, labels in loaders["val"]:
            right += int((m(**inputs).logits.argmax(dim=-1) == labels).sum())
            total += len(labels)
        return right / total

    return task_from_model(
        model,
        calib_loader=loaders["calib"],
        val_loader=loaders["val"],
        test_loader=loaders["test"],
        train_loader=loaders["train"],
        eval_fn=val_accuracy,
        name="digits_bert_accuracy",
    )
