"""An exponential moving average of a model's weights, kept beside them during training (train.ema_decay).

After every optimizer step the average moves toward the trained weights: avg <- avg + (1 - d_t) (w - avg), with
d_t = min(decay, (1 + t) / (10 + t)) at the t-th update, so that the first steps, whose weights are far from where
training goes, are forgotten fast (TensorFlow's ExponentialMovingAverage with num_updates). The trainer scores
validation with the average, keeps and serves it; training itself goes on from the trained weights. Each rank
averages the whole parameters it holds (ZeRO 0-2). Not under ZeRO-3 (refused, refuse_partitioned): there DeepSpeed
keeps its small ("persistent") parameters gathered between steps, so swapping the average into each rank's
partitions would leave those out of what is validated and served.
"""

from __future__ import annotations

import contextlib

import torch

from genrec.config import ConfigError, GenrecConfig
from genrec.engine import zero_stage


def decay_at(decay: float, updates: int) -> float:
    """The decay of the average's (updates + 1)-th update: `decay`, less while few updates were made."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def refuse_partitioned(cfg: GenrecConfig) -> None:
    """train.ema_decay under ZeRO-3 refused, naming the keys, before any worker starts (see the module docstring)."""
    if cfg.train.ema_decay is not None and zero_stage(cfg) == 3:
        raise ConfigError(f"train.ema_decay={cfg.train.ema_decay} under ZeRO-3 (train.zero_stage="
                          f"{cfg.train.zero_stage}): a weight average is kept only for ZeRO stages 0-2; set "
                          "train.zero_stage to 1 or 2, or train.ema_decay to null")


class WeightAverage:
    """The average of `module`'s parameters, in fp32 (the weights may be bf16)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay}: an average's decay lies between 0 and 1")
        self.params = list(module.parameters())
        if any(hasattr(p, "ds_tensor") for p in self.params):
            raise ValueError("a weight average of ZeRO-3-partitioned parameters: not supported (refuse_partitioned)")
        self.decay = decay
        self.updates = 0
        with torch.no_grad():
            self.average = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """One step toward the current weights (after an optimizer step)."""
        weight = 1.0 - decay_at(self.decay, self.updates)
        for average, p in zip(self.average, self.params):  # one at a time: no fp32 copy of every bf16 weight at once
            average.lerp_(p.detach().float(), weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The module's weights replaced by the average inside the block, the trained ones back after it (even when
        the block raises)."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, trained):
                    p.copy_(w)

    def state_dict(self) -> dict:
        """Tensors, numbers: what genrec.checkpoint saves with a rank's resume state and loads weights-only."""
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        """What state_dict gave, back (a resumed run on the same worker count): the same shapes, in order. The decay
        stays the one this run is configured with."""
        shapes = [tuple(a.shape) for a in state["average"]]
        if shapes != [tuple(a.shape) for a in self.average]:
            raise ValueError("the saved weight average holds other tensors than this model's")
        self.updates = int(state["updates"])
        self.average = [a.float().clone() for a in state["average"]]


def averaged(average: WeightAverage | None):
    """Inside the block the module holds the average's weights, when there is one."""
    return average.applied() if average is not None else contextlib.nullcontext()
