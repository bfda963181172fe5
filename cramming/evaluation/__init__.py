"""Downstream evaluation: GLUE / SuperGLUE fine-tuning with the official metrics."""

from cramming.evaluation.config import EvalConfig, EvalSettings, validate_eval_config
from cramming.evaluation.runner import load_checkpoint_for_eval, run_evaluation
from cramming.evaluation.tasks import TASKS, Task, get_task

__all__ = ["EvalConfig", "EvalSettings", "TASKS", "Task", "get_task", "load_checkpoint_for_eval",
           "run_evaluation", "validate_eval_config"]
