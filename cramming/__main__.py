"""The entry scripts as package commands, for tools that start jobs without a checkout:

    python -m cramming pretrain name=run1 budget=1      # = python pretrain_bert.py ...
    python -m cramming eval name=run1 eval=GLUE_sane     # = python eval.py ...

(the study command, ``python -m cramming.study``, launches its cells this way).
"""

import sys

from cramming.cli import launch_eval, launch_pretraining

COMMANDS = {"pretrain": ("pretrain_bert.py", launch_pretraining), "eval": ("eval.py", launch_eval)}


def main() -> None:
    """Dispatch ``python -m cramming <command> [overrides]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m cramming {{{','.join(COMMANDS)}}} [key=value ...]",
              file=sys.stderr)
        sys.exit(2)
    script, launch = COMMANDS[sys.argv.pop(1)]
    sys.argv[0] = script  # the job and log names of the script it stands for
    launch()


if __name__ == "__main__":
    main()
