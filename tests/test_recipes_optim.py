"""Optimizer presets carry their originals' defaults; Sophia-G, Lion and LAMB behave as there."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cramming.architectures import IGNORE_INDEX, build_model
from cramming.backend.optim import Lamb, Lion, SophiaG
from cramming.backend.optimizers import build_optimizer
from cramming.config import compose, load_pretrain_config
from cramming.errors import ConfigError
from cramming.objectives import Microbatch
from efficient_training.sophia_hessian import SophiaHessianHook, estimate_hessian

NTNG = "JeanKaddour/NoTrainNoGain, bert/cramming/config/train/optim/"
# preset: (where the values come from, torch class built, values there)
CITED = {
    "adam": (NTNG + "adam.yaml (type AdamW)", torch.optim.AdamW,
             dict(lr=1e-3, betas=[0.9, 0.98], eps=1e-12, weight_decay=0.01)),
    "adamw": ("JonasGeiping/cramming, cramming/config/train/optim/adam.yaml (type AdamW) with "
              "train/bert-o4.yaml optim.lr 1e-3", torch.optim.AdamW,
              dict(lr=1e-3, betas=[0.9, 0.98], eps=1e-12, weight_decay=0.01)),
    "adam_classic": (NTNG + "adam_classic.yaml (type Adam)", torch.optim.Adam,
                     dict(lr=5e-4, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01)),
    "lion": (NTNG + "lion.yaml", Lion, dict(lr=1e-4, betas=[0.9, 0.99], weight_decay=0.1)),
    "sophiag": (NTNG + "sophiag.yaml (lr, weight_decay, rho, bs); SophiaG defaults in "
                "bert/cramming/backend/optimizers/sophiag.py (betas, 1e-15); train/bert-o3.yaml "
                "sophia: (batch_size_hess_update, hess_update_frequency); impl/_default.yaml "
                "microbatch_size 128 (the groups pretrain_bert_sophia.py averages over)",
                SophiaG, dict(lr=1e-3, betas=[0.965, 0.99], eps=1e-15, weight_decay=0.01,
                              rho=0.04, hessian_scale=196608, hessian_batch_size=768,
                              hessian_interval=10, hessian_mean_rows=128)),
    "lamb": ("ltgoslo/gpt-bert, pretraining/train_multi_gpu.py argparse defaults", Lamb,
             dict(lr=1e-2, betas=[0.9, 0.98], eps=1e-8, weight_decay=0.1)),
}


def preset(name: str, *extra: str):
    return load_pretrain_config(compose("pretrain", [f"train/optim={name}", "arch=bert-tiny",
                                                     "data.vocab_size=300", *extra]))


@pytest.mark.parametrize("name", sorted(CITED))
def test_preset_values_are_the_cited_ones(name):
    source, cls, values = CITED[name]
    cfg = preset(name)
    optim = cfg.train.optim
    for key, value in values.items():
        assert getattr(optim, key) == pytest.approx(value), (name, key, source)
    model = build_model(cfg.arch, vocab_size=300)
    optimizer = build_optimizer(model, optim, torch.device("cpu"))
    assert type(optimizer) is cls, source
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == values["weight_decay"] and exempt["weight_decay"] == 0
    assert decayed["lr"] == values["lr"] and list(decayed["betas"]) == values["betas"]
    if "eps" in values:
        assert decayed["eps"] == values["eps"]


def test_every_optimizer_choice_has_a_cited_preset():
    from cramming.config.schema import CHOICES

    assert set(CHOICES["train.optim.name"]) == set(CITED)


def test_adam_decays_decoupled_and_adam_classic_in_the_gradient():
    # Zero gradient on a matrix: AdamW only shrinks it by (1 - lr x wd); Adam's L2 term
    # becomes the gradient, so Adam's normalised step moves it by about lr.
    weight = torch.randn(4, 4)
    moved = {}
    for name in ("adam", "adam_classic"):
        layer = torch.nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        optim = preset(name, "train.optim.lr=0.1", "train.optim.weight_decay=0.5").train.optim
        optimizer = build_optimizer(layer, optim, torch.device("cpu"))
        layer.weight.grad = torch.zeros_like(weight)
        optimizer.step()
        moved[name] = layer.weight.detach()
    assert torch.allclose(moved["adam"], weight * (1 - 0.1 * 0.5))
    assert torch.allclose(moved["adam_classic"], weight - 0.1 * weight.sign(), atol=1e-4)


def test_sophia_update_is_ntng_with_its_fixed_batch_scale():
    # NTNG: ratio = |m| / (rho x bs x h + 1e-15), clipped at 1; p -= lr x sign(m) x ratio,
    # after p *= 1 - lr x wd; h is an EMA of g_hat**2 (no batch factor folded in).
    p0 = torch.tensor([1.0, -2.0, 0.5, 3.0])
    g_hat = torch.tensor([1e-2, -3e-4, 1e-5, 0.0])
    grad = torch.tensor([0.02, 0.01, -0.05, 0.03])
    param = torch.nn.Parameter(p0.clone())
    optimizer = SophiaG([param], lr=1e-3, betas=(0.965, 0.99), rho=0.04, eps=1e-15,
                        weight_decay=0.01, hessian_scale=196608)
    param.grad = g_hat.clone()
    optimizer.update_hessian(num_predictions=12345)  # ignored with a fixed scale
    h = 0.01 * g_hat ** 2
    assert torch.allclose(optimizer.state[param]["hessian"], h)
    param.grad = grad.clone()
    optimizer.step()
    m = (1 - 0.965) * grad
    ratio = (m.abs() / (0.04 * 196608 * h + 1e-15)).clamp(max=1)
    expected = p0 * (1 - 1e-3 * 0.01) - 1e-3 * m.sign() * ratio
    assert torch.allclose(param.detach(), expected, atol=1e-9)
    assert 0 < ratio[0] < 1 and ratio[3] == 1  # both branches of the clip were taken


def masked_batch(vocab: int, rows: int = 4, length: int = 16, seed: int = 0) -> Microbatch:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=generator)
    mask = torch.rand(rows, length, generator=generator) < 0.3
    mask[:, 0] = True
    return Microbatch(ids, torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX)),
                      torch.arange(rows))


def test_sophia_hessian_estimate_with_the_fixed_scale_is_the_mean_gradient_squared():
    cfg = preset("sophiag", "train.optim.betas=[0.9,0.0]")
    torch.manual_seed(0)
    model = build_model(cfg.arch, vocab_size=300)
    optimizer = build_optimizer(model, cfg.train.optim, torch.device("cpu"))
    batches = [masked_batch(300, seed=1), masked_batch(300, seed=2)]
    total = estimate_hessian(model, optimizer, batches, torch.Generator().manual_seed(3),
                             torch.device("cpu"))
    assert total > 0
    # the same gradient again: mean sampled-label loss over the estimator batch
    reference = build_optimizer(model, cfg.train.optim.__class__(
        name="sophiag", betas=[0.9, 0.0]), torch.device("cpu"))  # scale null: B = total
    estimate_hessian(model, reference, batches, torch.Generator().manual_seed(3),
                     torch.device("cpu"))
    for p in model.parameters():
        if p in optimizer.state:
            assert torch.allclose(optimizer.state[p]["hessian"] * total,
                                  reference.state[p]["hessian"], rtol=1e-5, atol=1e-20)


@pytest.mark.parametrize("mean_rows", [2, 3, 8])
def test_sophia_estimate_sums_the_mean_losses_of_row_groups_as_ntng(mean_rows):
    # NTNG: one backward() of the mean sampled-label loss per 128-row microbatch, summed.
    # Here groups of `mean_rows` rows, across our microbatch boundaries (4 rows each).
    cfg = preset("sophiag", "train.optim.betas=[0.9,0.0]",
                 f"train.optim.hessian_mean_rows={mean_rows}")
    torch.manual_seed(0)
    model = build_model(cfg.arch, vocab_size=300).eval()
    optimizer = build_optimizer(model, cfg.train.optim, torch.device("cpu"))
    batches = [masked_batch(300, seed=1), masked_batch(300, seed=2)]
    estimate_hessian(model, optimizer, batches, torch.Generator().manual_seed(3),
                     torch.device("cpu"), mean_rows=cfg.train.optim.hessian_mean_rows)

    generator, losses, rows = torch.Generator().manual_seed(3), [], []
    model.zero_grad()
    for offset, b in zip((0, 4), batches):
        masked = b.labels != IGNORE_INDEX
        logits = model.predict(model.encode(b.input_ids)[masked])
        sampled = torch.multinomial(torch.softmax(logits.detach(), -1), 1,
                                    generator=generator).squeeze(1)
        losses.append(F.cross_entropy(logits, sampled, reduction="none"))
        rows.append(masked.nonzero()[:, 0] + offset)
    losses, rows = torch.cat(losses), torch.cat(rows)
    group_means = [losses[rows // mean_rows == g].mean() for g in range(-(-8 // mean_rows))]
    torch.stack(group_means).sum().backward()
    for p in model.parameters():
        if p.grad is not None:  # fixed scale: h = g_hat**2 (beta2 = 0), no factor
            assert torch.allclose(optimizer.state[p]["hessian"], p.grad ** 2, rtol=1e-4,
                                  atol=1e-16)


def test_sophia_hook_uses_ntng_hessian_batch_and_interval():
    optim = preset("sophiag").train.optim
    hook = SophiaHessianHook(optim, microbatch_size=64, seed=0)
    assert (hook.batch_size, hook.interval, hook.mean_rows) == (768, 10, 128)


def test_lamb_is_gpt_berts_on_decayed_and_undecayed_tensors():
    # ltgoslo/gpt-bert pretraining/lamb.py: u = m_hat / (sqrt(v_hat) + eps) (+ wd x p and the
    # trust ratio ||p|| / ||u|| only when wd > 0).
    torch.manual_seed(2)
    w0, b0 = torch.randn(3, 3), torch.randn(3)
    gw, gb = torch.randn(3, 3), torch.randn(3)
    weight, bias = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    optimizer = Lamb([{"params": [weight], "weight_decay": 0.1},
                      {"params": [bias], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.98),
                     eps=1e-8)
    weight.grad, bias.grad = gw.clone(), gb.clone()
    optimizer.step()
    u = gw / (gw.abs() + 1e-8) + 0.1 * w0  # one step: bias corrections cancel
    assert torch.allclose(weight.detach(), w0 - 1e-2 * (w0.norm() / u.norm()) * u, atol=1e-6)
    assert torch.allclose(bias.detach(), b0 - 1e-2 * gb / (gb.abs() + 1e-8), atol=1e-6)


# A preset's file lists only its own keys (Hydra refuses others without "+"); a key added
# anyway, or a typed default left in the schema, is refused by the checks.
@pytest.mark.parametrize("name, override, key", [
    ("lion", "++train.optim.rho=0.1", "train.optim.rho"),
    ("adamw", "++train.optim.hessian_scale=5", "train.optim.hessian_scale"),
    ("lion", "++train.optim.eps=1e-6", "train.optim.eps"),
    ("lamb", "++train.optim.fused=true", "train.optim.fused"),
    ("sophiag", "train.optim.hessian_scale=-1", "train.optim.hessian_scale"),
    ("sophiag", "train.optim.hessian_mean_rows=0", "train.optim.hessian_mean_rows"),
    ("adamw", "++train.optim.hessian_mean_rows=128", "train.optim.hessian_mean_rows"),
])
def test_keys_that_do_not_apply_are_refused_in_one_line(name, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        preset(name, override)
    assert "\n" not in str(error.value)
