"""Fine-tune a pretrained checkpoint on GLUE / SuperGLUE tasks and report official scores.

    python eval.py name=run1 eval=GLUE_sane
    python eval.py name=run1 eval=GLUE eval.data_dir=../shared/data eval.seeds=[0,1,2,3,4]
    python eval.py name=run1 eval=demo            # the bundled task sample, ~1 minute on a CPU

Results: <base_dir>/<name>/eval/<date>_<time>/{results.json,results.md,predictions/}.
"""

from cramming.cli import launch_eval

if __name__ == "__main__":
    launch_eval()
