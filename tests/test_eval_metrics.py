"""Official metrics against hand-checked values and scikit-learn / SciPy."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from cramming.evaluation import metrics as M


def test_hand_checked_values():
    # 3 TP, 1 FP, 2 FN, 2 TN -> acc 5/8, F1 = 6 / (6 + 1 + 2)
    labels = [1, 1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 0, 1, 0, 0]
    assert M.accuracy(preds, labels) == pytest.approx(5 / 8)
    assert M.f1_binary(preds, labels) == pytest.approx(6 / 9)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 2) / sqrt(4*5*3*4)
    assert M.matthews_corrcoef(preds, labels) == pytest.approx(4 / np.sqrt(240))
    assert M.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3, 4], [10, 20, 30, 1]) == pytest.approx(-0.2)


def test_against_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    assert M.accuracy(preds, labels) == pytest.approx(skm.accuracy_score(labels, preds))
    assert M.f1_binary(preds, labels) == pytest.approx(skm.f1_score(labels, preds))
    assert M.matthews_corrcoef(preds, labels) == pytest.approx(
        skm.matthews_corrcoef(labels, preds))
    three, three_pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert M.f1_macro(three_pred, three, 3) == pytest.approx(
        skm.f1_score(three, three_pred, average="macro", labels=[0, 1, 2]))
    # Multi-class MCC is GLUE AX's R3 (Gorodkin's R_K), as sklearn computes it.
    assert M.matthews_corrcoef(three_pred, three) == pytest.approx(
        skm.matthews_corrcoef(three, three_pred))
    x = rng.normal(size=200)
    y = np.round(x + rng.normal(size=200), 1)  # rounding creates ties for Spearman
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def test_macro_f1_counts_a_never_predicted_class():
    labels, preds = [0, 1, 2, 2], [0, 1, 1, 1]
    assert M.f1_macro(preds, labels, 3) == pytest.approx((1 + 0.5 + 0) / 3)


def test_multirc_em_and_f1a():
    # question a: both options right; question b: one of two wrong
    preds, labels = [1, 0, 1, 1], [1, 0, 1, 0]
    scores = M.multirc_scores(preds, labels, ["a", "a", "b", "b"])
    assert scores["em"] == pytest.approx(0.5)
    assert scores["f1a"] == pytest.approx(skm.f1_score(labels, preds))


def test_record_squad_normalisation():
    assert M.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    scores = M.record_scores(["the Eiffel Tower", "Paris France"],
                             [["Eiffel Tower"], ["France", "Lyon"]])
    assert scores["em"] == pytest.approx(0.5)
    # second: tokens {paris, france} vs {france}: P 1/2, R 1 -> F1 2/3
    assert scores["f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_gender_parity():
    preds = [0, 0, 1, 0, 1, 1]
    assert M.gender_parity(preds, [7, 7, 8, 8, 9, 9]) == pytest.approx(2 / 3)
