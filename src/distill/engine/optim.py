"""The optimizer and the learning-rate schedule of ``train.optimizer`` / ``train.schedule``."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from distill.config import OptimizerConfig, ScheduleConfig

_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW from ``train.optimizer``.

    Weight decay is not applied to biases and normalization weights (1-d parameters), the
    usual practice for conv nets and transformers alike. The update is PyTorch's fused kernel (one
    call over all parameters) where every parameter is a floating-point tensor on the CPU or a CUDA
    device (:func:`fusable`); it computes the same update as the per-parameter loop to rounding (a few
    float32 ulps) in less time: on this project's CPU the optimizer step of the Fashion-MNIST CNN student took 0.47x,
    resnet8's 0.33x of the loop's (``benchmarks/results/throughput.md``, "What fit does per step beyond the bound").
    """
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = {"fused": True} if fusable(params) else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **fused)
    raise ValueError(f"train.optimizer.name: unknown optimizer {cfg.name!r}; choose sgd, adam or adamw")


def fusable(params: list[nn.Parameter]) -> bool:
    """Whether PyTorch's fused optimizer kernels take these parameters: all floating point (float16 to float64),
    all on the CPU or all on CUDA devices, and at least one."""
    devices = {p.device.type for p in params}
    return bool(params) and devices in ({"cpu"}, {"cuda"}) and all(p.dtype in _FUSED_DTYPES for p in params)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig, base_lr: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based), applied before the step.

    Linear warmup over ``warmup_epochs``, then: ``constant``; ``step`` (times gamma every
    ``step_size`` epochs); ``multistep`` (times gamma at each epoch in ``milestones``); ``cosine``
    (half a cosine from 1 to ``min_lr / base_lr`` over the steps after warmup, no restarts).
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    epoch = step / max(steps_per_epoch, 1)
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** int(epoch // cfg.step_size)
    if cfg.name == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.name == "cosine":
        span = max(total_steps - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        floor = cfg.min_lr / base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.schedule.name: unknown schedule {cfg.name!r}")


class Schedule:
    """Sets each parameter group's learning rate for a step: its base rate times :func:`lr_factor`."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int,
                 steps_per_epoch: int) -> None:
        self.optimizer, self.cfg, self.total_steps, self.steps_per_epoch = optimizer, cfg, total_steps, steps_per_epoch
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    def apply(self, step: int) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * lr_factor(step, self.total_steps, self.steps_per_epoch, self.cfg, base)


class Stepper:
    """One optimizer step from a loss: zero the gradients, backward (scaled under fp16), clip, step."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], clip_grad_norm: float | None,
                 scaler: torch.amp.GradScaler | None) -> None:
        self.optimizer, self.params, self.clip_grad_norm, self.scaler = optimizer, params, clip_grad_norm, scaler

    def __call__(self, loss: torch.Tensor) -> None:
        optimizer, scaler = self.optimizer, self.scaler
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
