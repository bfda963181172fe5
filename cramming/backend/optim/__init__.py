"""Optimizers beyond torch's: Lion, Sophia-G and LAMB (built by ``build_optimizer``)."""

from cramming.backend.optim.lamb import Lamb
from cramming.backend.optim.lion import Lion
from cramming.backend.optim.sophia import SophiaG

__all__ = ["Lamb", "Lion", "SophiaG"]
