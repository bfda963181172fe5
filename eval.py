"""Fine-tune a pretrained checkpoint on GLUE / SuperGLUE tasks and report official scores.

    python eval.py name=run1 eval=GLUE_sane
    python eval.py name=run1 eval=GLUE eval.data_dir=../shared/data eval.seeds=[0,1,2,3,4]
    python eval.py name=run1 eval=demo            # the bundled task sample, ~1 minute on a CPU

Results: <base_dir>/<name>/eval/<date>_<time>/{results.json,results.md,predictions/}.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cramming.cli import translate_argv
from cramming.config import CONFIG_DIR, register_resolvers
from cramming.errors import CrammingError

register_resolvers()
log = logging.getLogger("eval")


@hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base=None)
def launch(cfg: DictConfig) -> None:
    from cramming.evaluation import load_checkpoint_for_eval, run_evaluation, validate_eval_config
    from cramming.evaluation.results import markdown_table

    try:
        typed = validate_eval_config(cfg)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        encoder, tokenizer, folder = load_checkpoint_for_eval(typed)
        log.info("Evaluating %s on %s", folder, ", ".join(typed.eval.tasks))
        results = run_evaluation(typed, out_dir, encoder, tokenizer, model_folder=str(folder))
    except CrammingError as error:
        log.error("%s", error)
        sys.exit(1)
    print("\n" + markdown_table(results))
    print(f"Results written to {out_dir}/results.json and results.md")


if __name__ == "__main__":
    translate_argv("eval")  # NTNG's / Cramming's keys as typed (cramming.config.foreign)
    launch()
