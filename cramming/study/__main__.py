"""Run a study end to end:

    python -m cramming.study name=demo-study                       # study=demo, ~15 min on CPU
    python -m cramming.study name=ntng-mini study=ntng study.budgets=[1,2] budget_kind=rst \
        study.seeds=[0,1,2] eval=GLUE_sane eval.seeds=[0,1] study.launcher=slurm

Rerun the same command to continue an interrupted study; ``python -m cramming.study.report
<base_dir>/<name>`` rewrites the report alone.
"""

import logging
import sys

from cramming.cli import exit_on_error


def main(arguments: list[str] | None = None) -> None:
    from cramming.config import register_resolvers
    from cramming.study.run import compose_study, run_study

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_resolvers()
    study = exit_on_error(compose_study, sys.argv[1:] if arguments is None else arguments)
    study.folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(study.folder / "study.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    logging.getLogger("cramming").addHandler(handler)
    report = exit_on_error(run_study, study)
    print(f"Study report: {report}")


if __name__ == "__main__":
    main()
