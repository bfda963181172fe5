"""A layer list that runs only some of its layers: the mechanism behind stacking and dropping.

:class:`ActiveLayers` replaces a model's ``layers`` ``nn.ModuleList`` in place. It keeps
the same children under the same names, so parameters, optimizer references and checkpoint
keys are unchanged; only iteration (what ``encode`` loops over) changes:

* ``depth``: only the first ``depth`` layers run (layer stacking);
* ``keep_probs``: in training mode each of those is kept with its probability, otherwise
  skipped (progressive layer dropping); with ``rescale`` a kept layer's residual branch is
  divided by its keep probability so the expected output matches the full model.

``last_active`` is the number of layers the latest pass ran; the budget clock reads it
(:func:`cramming.clock.active_layers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn


class _Rescaled:
    """Calls ``layer`` and scales its residual branch: ``x + (layer(x) - x) / p``."""

    def __init__(self, layer: nn.Module, keep_prob: float):
        self.layer, self.keep_prob = layer, keep_prob

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x + (self.layer(x, *args, **kwargs) - x) / self.keep_prob


class ActiveLayers(nn.ModuleList):
    """``nn.ModuleList`` whose iteration yields the layers that run in this pass."""

    def __init__(self, layers: nn.ModuleList, depth: int | None = None):
        super().__init__(list(layers))
        self.depth = len(layers) if depth is None else depth
        self.keep_probs: list[float] | None = None
        self.rescale = False
        self.generator: torch.Generator | None = None
        self.last_active: int = self.depth

    def all_layers(self) -> list[nn.Module]:
        """Every layer, running or not."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[nn.Module | Callable]:
        layers = self.all_layers()[: self.depth]
        if not self.training or self.keep_probs is None:
            self.last_active = len(layers)
            return iter(layers)
        chosen: list[nn.Module | Callable] = []
        draws = torch.rand(len(layers), generator=self.generator)
        for layer, draw, keep in zip(layers, draws.tolist(), self.keep_probs):
            if draw < keep:
                chosen.append(_Rescaled(layer, keep) if self.rescale and keep < 1 else layer)
        self.last_active = len(chosen)
        return iter(chosen)


def install_active_layers(model: nn.Module) -> ActiveLayers:
    """Swap ``model.layers`` for an :class:`ActiveLayers` (idempotent) and return it."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, ActiveLayers):
        return layers
    if not isinstance(layers, nn.ModuleList):
        from cramming.errors import ConfigError

        raise ConfigError(f"{type(model).__name__} has no `layers` ModuleList: layer stacking "
                          f"and layer dropping need a model like arch.model_type=crammed.")
    active = ActiveLayers(layers)
    active.train(layers.training)
    model.layers = active
    return active
