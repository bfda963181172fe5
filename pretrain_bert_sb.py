"""Pretrain with selective backprop: `pretrain_bert.py method=selective_backprop`."""

from cramming.cli import launch_pretraining

if __name__ == "__main__":
    launch_pretraining({"method": "selective_backprop"})
