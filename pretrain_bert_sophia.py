"""Pretrain with Sophia-G: `pretrain_bert.py train/optim=sophiag`."""

from cramming.cli import launch_pretraining

if __name__ == "__main__":
    launch_pretraining({"train/optim": "sophiag"})
