"""Pretrain with selective backprop: `pretrain_bert.py method=selective_backprop`.

As NTNG's script, it defaults to NTNG's arch=bert-c5 train=bert-o3 (each can be overridden).
"""

from cramming.cli import launch_pretraining
from cramming.config.foreign import NTNG_SETUP

PRESET = {"method": "selective_backprop", **NTNG_SETUP}

if __name__ == "__main__":
    launch_pretraining(PRESET)
