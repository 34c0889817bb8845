"""One QAT model with its optimizers and loss terms: :class:`_Trainer` ``.step`` is one optimizer step
(data parallel through a DDP replica inside a process group)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench import distributed
from workbench.qat.config import QATConfig
from workbench.qat.losses import distillation_loss, quantization_loss
from workbench.qat.lsq import _SCALE_EPS, LearnedScales, learn_scales
from workbench.qat.mixed_bits import _mixed, expected_weight_bits
from workbench.quant import QuantPlan
from workbench.quant.inputs import call_model, move_inputs, primary_output


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class _Trainer:
    """One QAT model, its optimizer and loss terms; ``step`` is one optimizer step."""

    def __init__(
        self,
        model: nn.Module,
        config: QATConfig,
        *,
        plan: QuantPlan,
        teacher: nn.Module | None,
        counts: Mapping[str, int],
        example: Tensor,
        relaxed: bool,
        output_key: str | int | None = None,
    ) -> None:
        self.model = model
        self.output_key = output_key  # the output tensor the losses use (None: the primary output)
        self.config = config
        self.plan = plan
        self.teacher = teacher
        self.counts = counts
        self.relaxed = relaxed
        self.learned = LearnedScales()
        if config.scale_mode == "lsq":
            self.learned = learn_scales(model, example, act=config.learn_act_scales)
        learned_ids = {id(p) for p in self.learned.params}
        logits = [q.logits for q in _mixed(model).values()] if relaxed else []
        logit_ids = {id(p) for p in logits}
        for q in _mixed(model).values():  # logits of a discretized or frozen run are not trained
            q.logits.requires_grad_(relaxed)
        weights = [
            p
            for p in model.parameters()
            if p.requires_grad and id(p) not in learned_ids and id(p) not in logit_ids
        ]
        groups = [{"params": weights, "weight_decay": config.weight_decay, "base_lr": config.lr}]
        for item in self.learned.items:
            lr = config.scale_lr * max(item.init, _SCALE_EPS)
            groups.append({"params": [item.param], "weight_decay": 0.0, "base_lr": lr})
        for g in groups:
            g["lr"] = g["base_lr"]
        if config.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=config.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
        # Plain SGD for the bit logits: Adam would normalise the penalty's gradient away, so the penalty's
        # strength would not matter (only its sign); with SGD a larger penalty moves the logits further.
        self.bit_optimizer = torch.optim.SGD(logits, lr=config.bit_lr, momentum=0.9) if logits else None
        self.device = next(model.parameters()).device
        # In a process group, forward / backward go through a DDP replica (gradients averaged over ranks)
        self.dist = distributed.current()
        self.forward_model: nn.Module = model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def set_lr(self, factor: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor

    def train_mode(self) -> None:
        self.model.train()
        _freeze_bn(self.model)

    def _share(self, mean: Tensor, out: Tensor, n_local: int, n_global: int) -> Tensor:
        """This rank's share of a batch-mean loss: summed over ranks and averaged by DDP (divided by the world
        size), the shares give the mean over the global batch, whatever the slice sizes."""
        if not self.dist.active:
            return mean
        if n_local == 0:
            return out.sum() * 0.0  # keeps every parameter in the graph, as DDP requires
        return mean * (n_local * self.dist.world_size / n_global)

    def step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        cfg = self.config
        x, y = move_inputs(x, self.device), y.to(self.device)
        n_global = int(y.shape[0])
        x, y = distributed.shard(x, y, self.dist)
        n_local = int(y.shape[0])
        self.optimizer.zero_grad(set_to_none=True)
        if self.bit_optimizer is not None:
            self.bit_optimizer.zero_grad(set_to_none=True)
        out = primary_output(call_model(self.forward_model, x), key=self.output_key)
        ce = self._share(F.cross_entropy(out, y) if n_local else out.sum(), out, n_local, n_global)
        loss = ce
        parts = {"ce_loss": ce}
        if cfg.distill_weight > 0 and self.teacher is not None:
            with torch.no_grad():
                t_out = primary_output(call_model(self.teacher, x), key=self.output_key)
            kd = distillation_loss(out, t_out, cfg.temperature) if n_local else out.sum()
            kd = self._share(kd, out, n_local, n_global)
            loss = (1.0 - cfg.distill_weight) * ce + cfg.distill_weight * kd
            parts["distill_loss"] = kd
        if cfg.quant_loss_weight > 0:
            ql = quantization_loss(self.model)
            loss = loss + cfg.quant_loss_weight * ql
            parts["quant_loss"] = ql
        if self.relaxed:
            bits = expected_weight_bits(self.model, self.plan, self.counts)
            loss = loss + cfg.bit_penalty * bits
            parts["expected_bits"] = bits
        loss.backward()
        self.optimizer.step()
        if self.bit_optimizer is not None:
            self.bit_optimizer.step()
        self.learned.clamp_()
        parts["loss"] = loss
        if self.dist.active:  # report the global batch's losses: batch terms summed, the others are equal
            names = [k for k in ("ce_loss", "distill_loss", "loss") if k in parts]
            total = distributed.all_reduce_sum(torch.stack([parts[k].detach().float() for k in names]))
            for k, v in zip(names, total / self.dist.world_size, strict=True):
                parts[k] = v
        return {k: float(v.detach()) for k, v in parts.items()}

    def close(self) -> None:
        """Learned scales back to buffers: the model is a plain quantized model again."""
        self.forward_model = self.model  # drops the DDP replica (and its gradient hooks)
        self.learned.close()
        for q in _mixed(self.model).values():
            q.logits.requires_grad_(False)
