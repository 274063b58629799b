"""Optimisers and learning-rate schedules of the ``train:`` block, stepped once per optimiser step.

The budget is ``epochs x steps_per_epoch`` steps. The rate at step ``s`` (0-based, before the step) is
``lr * warmup(s) * decay(s)`` with

- ``warmup(s) = min(1, (s + 1) / W)`` for ``W = warmup_epochs x steps_per_epoch`` warm-up steps (1 when ``W = 0``): a
  linear ramp from ~0 that keeps the first steps of an adaptive optimiser, whose moment estimates are still poor, small
  (Goyal et al. 2017, "Accurate, large minibatch SGD");
- ``decay(s) = lr_decay ** floor(s / steps_per_epoch)`` (``exponential``: Luo et al. 2021's per-epoch decay),
  ``(1 + cos(pi * t)) / 2`` with ``t`` the share of the post-warm-up budget done (``cosine``: Loshchilov & Hutter 2017,
  SGDR, without restarts), or 1 (``constant``).

Adam and AdamW use betas (0.9, 0.999); AdamW decouples the weight decay from the gradient (Loshchilov & Hutter 2019),
Adam adds it to the gradient (L2); SGD takes ``momentum`` (the HEp-2 paper's optimiser, Gupta et al. 2019).
"""

import math

import torch

__all__ = ["build_optimizer", "build_schedule", "learning_rate_factor"]

BETAS = (0.9, 0.999)


def build_optimizer(parameters, spec: dict) -> torch.optim.Optimizer:
    """The ``train.optimizer`` over ``parameters`` with ``lr``, ``weight_decay`` and (SGD) ``momentum``."""
    name, lr, weight_decay = spec["optimizer"], spec["lr"], spec["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=BETAS, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=BETAS, weight_decay=weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=spec["momentum"], weight_decay=weight_decay)


def learning_rate_factor(step: int, spec: dict, steps_per_epoch: int) -> float:
    """``warmup(step) * decay(step)`` of the module docstring: the factor on ``train.lr`` before optimiser step
    ``step``."""
    warmup_steps = round(spec["warmup_epochs"] * steps_per_epoch)
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if spec["schedule"] == "exponential":
        return factor * spec["lr_decay"] ** (step // steps_per_epoch)
    if spec["schedule"] == "cosine":
        budget = max(1, spec["epochs"] * steps_per_epoch - warmup_steps)
        done = min(1.0, max(0, step - warmup_steps) / budget)
        return factor * (1 + math.cos(math.pi * done)) / 2
    return factor


def build_schedule(optimizer: torch.optim.Optimizer, spec: dict, steps_per_epoch: int):
    """A scheduler to step after every optimiser step, giving :func:`learning_rate_factor`; its state is the step
    count, saved and restored with a checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, spec, steps_per_epoch))
