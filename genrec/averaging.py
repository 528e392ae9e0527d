"""An exponential moving average of a model's weights, kept beside them during training (train.ema_decay).

After every optimizer step the average moves toward the trained weights: avg <- avg + (1 - d_t) (w - avg), with
d_t = min(decay, (1 + t) / (10 + t)) at the t-th update, so that the first steps, whose weights are far from where
training goes, are forgotten fast (TensorFlow's ExponentialMovingAverage with num_updates). The trainer scores
validation with the average, keeps and serves it; training itself goes on from the trained weights. Each rank
averages what it holds: under ZeRO-3 its partition of every parameter (`ds_tensor`), otherwise the whole parameter.
"""

from __future__ import annotations

import contextlib

import torch


def decay_at(decay: float, updates: int) -> float:
    """The decay of the average's (updates + 1)-th update: `decay`, less while few updates were made."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def held(param: torch.nn.Parameter) -> torch.Tensor:
    """The part of a parameter this rank holds: its ZeRO-3 partition, or the parameter itself."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param


class WeightAverage:
    """The average of `module`'s parameters as this rank holds them, in fp32 (the weights may be bf16)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay}: an average's decay lies between 0 and 1")
        self.params = list(module.parameters())
        self.decay = decay
        self.updates = 0
        with torch.no_grad():
            self.average = [held(p).detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """One step toward the current weights (after an optimizer step)."""
        weight = 1.0 - decay_at(self.decay, self.updates)
        torch._foreach_lerp_(self.average, [held(p).detach().float() for p in self.params], weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The module's weights replaced by the average inside the block, the trained ones back after it (even when
        the block raises)."""
        trained = [held(p).detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                held(p).copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, trained):
                    held(p).copy_(w)

    def state_dict(self) -> dict:
        """Tensors, numbers: what genrec.checkpoint saves with a rank's resume state and loads weights-only."""
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        """What state_dict gave, back (a resumed run on the same worker count): the same shapes, in order."""
        shapes = [tuple(a.shape) for a in state["average"]]
        if shapes != [tuple(a.shape) for a in self.average]:
            raise ValueError("the saved weight average holds other tensors than this model's")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.average = [a.float().clone() for a in state["average"]]


def averaged(average: WeightAverage | None):
    """Inside the block the module holds the average's weights, when there is one."""
    return average.applied() if average is not None else contextlib.nullcontext()
