"""Studies: does a training trick beat the baseline at equal budget?

``python -m cramming.study`` pretrains every (method, budget, seed) cell (:mod:`.plan`,
:mod:`.run`), fine-tunes each, and writes a report with confidence intervals and plots
(:mod:`.report`, :mod:`.stats`).
"""
