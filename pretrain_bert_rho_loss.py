"""Pretrain with RHO-Loss: `pretrain_bert.py method=rho_loss` (needs method.rho_loss.il_losses).

As NTNG's script, it defaults to NTNG's arch=bert-c5 train=bert-o3 (each can be overridden).
"""

from cramming.cli import launch_pretraining
from cramming.config.foreign import NTNG_SETUP

PRESET = {"method": "rho_loss", **NTNG_SETUP}

if __name__ == "__main__":
    launch_pretraining(PRESET)
