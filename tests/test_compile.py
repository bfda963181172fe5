"""torch.compile(fullgraph=True) of the training forward + loss for every shipped arch.

Every ``arch/*.yaml`` (at a tiny size) must trace into one graph, forward and backward,
with no host sync (nonzero, item, ...) once the static decode count is set, and give the
eager loss and gradients. Most checks use the ``aot_eager`` backend (Dynamo + AOT
autograd: graph breaks and synced ops show up there, fast on CPU); two models also run
through Inductor, the backend ``impl.compile=true`` uses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from functorch.compile import make_boxed_func
from omegaconf import OmegaConf
from torch._dynamo.backends.common import aot_autograd

from cramming.architectures import IGNORE_INDEX, build_model
from cramming.backend.runtime import (
    CUDAGraphStep,
    check_compile_options,
    compile_model,
    compile_options,
    resolve_runtime,
)
from cramming.config import CONFIG_DIR, to_typed
from cramming.config.schema import ArchConfig, ImplConfig
from cramming.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 61
BATCH, SEQ, PER_ROW = 2, 8, 2  # the data masks exactly PER_ROW tokens in every row
FRACTION = PER_ROW / SEQ  # what the engine passes to set_static_decode
LM_TYPES = ("gpt", "llama", "ltg-bert")
YAMLS = sorted((CONFIG_DIR / "arch").glob("*.yaml"))
# aten ops that wait for the device (data-dependent shapes or values read on the host).
HOST_SYNC_OPS = {"nonzero", "_local_scalar_dense", "masked_select", "_unique2", "item"}


def tiny_arch(path: Path, **overrides) -> ArchConfig:
    """The YAML's structure at a tiny shape, without dropout (for exact comparisons)."""
    arch = to_typed(OmegaConf.load(path), ArchConfig)
    shape = dict(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=24,
                 max_seq_length=16, dropout=0.0, attention_dropout=0.0)
    if arch.num_kv_heads:
        shape["num_kv_heads"] = 1  # keep grouped-query attention (2 heads share 1)
    if arch.position_embedding == "relative":
        shape["position_buckets"] = 4
    return dataclasses.replace(arch, **{**shape, **overrides})


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with exactly PER_ROW labelled positions per row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=gen)
    positions = torch.rand(BATCH, SEQ, generator=gen).argsort(dim=1)[:, :PER_ROW]
    masked = torch.zeros(BATCH, SEQ, dtype=torch.bool).scatter_(1, positions, True)
    return ids, torch.where(masked, ids, IGNORE_INDEX)


def lm_kwargs(arch: ArchConfig) -> dict:
    """What the objectives pass to gpt / llama / ltg-bert (see objectives/common.py)."""
    if arch.model_type not in LM_TYPES:
        return {}
    documents = torch.tensor([[0] * 5 + [1] * 3, [0] * SEQ])
    return {"causal": arch.causal, "z_loss": 1e-4, "document_ids": documents}


class Recorder:
    """An aot_eager-like backend that keeps every Dynamo, forward and backward graph."""

    def __init__(self) -> None:
        self.dynamo, self.aten = [], []

    def _keep(self, gm, example_inputs):
        self.aten.append(gm)
        return make_boxed_func(gm.forward)

    def __call__(self, gm, example_inputs):
        self.dynamo.append(gm)
        return aot_autograd(fw_compiler=self._keep, bw_compiler=self._keep)(gm, example_inputs)

    def synced_ops(self) -> list[str]:
        ops = [getattr(node.target, "_opname", "") for gm in self.aten
               for node in gm.graph.nodes if node.op == "call_function"]
        assert any(ops), "no aten ops found: the check would be vacuous"
        return [op for op in ops if op in HOST_SYNC_OPS]


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def eager_reference(model, ids, labels, **kwargs):
    """Loss, counts and gradients of the eager model on the exact sparse path (nonzero)."""
    model.set_static_decode(None)
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=labels, **kwargs)
    out["loss"].backward()
    reference = {k: out[k].detach() for k in ("loss", "num_predictions", "num_correct")}
    if out["per_example_loss"] is not None:
        reference["per_example_loss"] = out["per_example_loss"].detach()
    return reference, grads(model)


def check_compiled_matches_eager(model, backend, rtol=1e-4, atol=1e-5, **kwargs):
    ids, labels = make_batch()
    reference, reference_grads = eager_reference(model, ids, labels, **kwargs)
    model.set_static_decode(FRACTION)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(ids, labels=labels, **kwargs)
    out["loss"].backward()
    for key, value in reference.items():
        torch.testing.assert_close(out[key].detach(), value, rtol=rtol, atol=atol, msg=key)
    compiled_grads = grads(model)
    assert compiled_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=rtol, atol=atol, msg=name)


CASES = [(path, {}) for path in YAMLS] + [
    # hf-bert ships with dense prediction; its sparse (static) path compiles too.
    (CONFIG_DIR / "arch" / "hf-bert-tiny.yaml", {"sparse_prediction": True}),
]


@pytest.mark.parametrize("path,overrides", CASES,
                         ids=[p.stem + ("-sparse" if o else "") for p, o in CASES])
def test_training_forward_and_loss_compile_to_one_sync_free_graph(path, overrides):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(tiny_arch(path, **overrides), VOCAB).train()
    recorder = Recorder()
    kwargs = {"return_per_example_loss": True, **lm_kwargs(model.arch)}
    check_compiled_matches_eager(model, recorder, **kwargs)
    # fullgraph=True already raises on a break; this also covers the backward graph.
    assert len(recorder.dynamo) == 1, f"{len(recorder.dynamo)} graphs (graph breaks?)"
    assert len(recorder.aten) == 2  # one forward, one backward graph
    assert recorder.synced_ops() == [], f"host syncs in the training graph: {recorder.synced_ops()}"


@pytest.mark.parametrize("name", ["crammed-bert", "llama-tiny"])
def test_inductor_compiles_the_training_step(name):
    """The real backend (impl.compile=true), engine call style. Cold Inductor builds take
    ~10 s each on CPU, so only our encoder (GLU, static sparse decode) and the class behind
    gpt / llama / ltg-bert (RoPE, grouped-query attention, causal SDPA) run it; the other
    YAMLs give Inductor the same kind of Dynamo graph (checked above with aot_eager)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    arch = tiny_arch(CONFIG_DIR / "arch" / f"{name}.yaml")
    model = build_model(arch, VOCAB).train()
    kwargs = {"causal": arch.causal} if arch.model_type in LM_TYPES else {}
    check_compiled_matches_eager(model, "inductor", rtol=1e-4, atol=1e-4, **kwargs)


def test_dropout_paths_trace_without_breaks():
    """With dropout on (no exact comparison possible) the graph is still whole."""
    torch._dynamo.reset()
    for name in ("crammed-bert", "gpt-bert-small"):
        arch = tiny_arch(CONFIG_DIR / "arch" / f"{name}.yaml", dropout=0.1,
                         attention_dropout=0.1)
        model = build_model(arch, VOCAB).train()
        model.set_static_decode(FRACTION)
        ids, labels = make_batch()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        out = compiled(ids, labels=labels, **lm_kwargs(arch))
        out["loss"].backward()
        assert torch.isfinite(out["loss"])


def test_sparse_decode_without_a_static_count_syncs():
    """Why the engine calls set_static_decode: the exact sparse path needs nonzero (a host
    sync; torch 2.13 traces it with an unbacked size under fullgraph, older ones break)."""
    torch._dynamo.reset()
    model = build_model(tiny_arch(CONFIG_DIR / "arch" / "bert-tiny.yaml"), VOCAB).train()
    assert model.arch.sparse_prediction and model.decode_fraction() is None
    ids, labels = make_batch()
    recorder = Recorder()
    try:
        torch.compile(model, fullgraph=True, backend=recorder)(ids, labels=labels)
    except torch._dynamo.exc.Unsupported as error:
        assert "nonzero" in str(error)
    else:
        assert "nonzero" in recorder.synced_ops()


def test_set_static_decode_overrides_and_restores_the_arch_fraction():
    model = build_model(tiny_arch(CONFIG_DIR / "arch" / "bert-tiny.yaml",
                                  fixed_masked_fraction=0.5), VOCAB)
    assert model.decode_fraction() == 0.5
    model.set_static_decode(FRACTION)
    assert model.decode_fraction() == FRACTION
    ids, labels = make_batch()
    out = model(ids, labels=labels)
    assert out["logits"].shape == (BATCH * PER_ROW, VOCAB)
    assert int(out["num_predictions"]) == BATCH * PER_ROW
    model.set_static_decode(None)
    assert model.decode_fraction() == 0.5
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="static decode"):
            model.set_static_decode(bad)


def test_compile_options_and_cuda_graph_checks():
    assert compile_options(ImplConfig()) == {"mode": None, "fullgraph": True}
    assert compile_options(ImplConfig(compile_fullgraph=False, compile_mode="max-autotune")) \
        == {"mode": "max-autotune", "fullgraph": False}
    graphs = ImplConfig(compile=True, cuda_graphs=True)
    assert compile_options(graphs)["mode"] == "reduce-overhead"
    assert compile_options(ImplConfig(), sharded=True)["fullgraph"] is False  # FSDP2 hooks
    step = compile_model(_Loss(), ImplConfig(compile=True, compile_mode="reduce-overhead"))
    assert isinstance(step, CUDAGraphStep)  # replay per microbatch, kept outputs cloned
    assert CUDAGraphStep(_Loss())(torch.ones(2))["loss"] == 2  # the wrapper itself, eager
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, ImplConfig(compile=False)) is model
    cuda = torch.device("cuda")
    check_compile_options(graphs, cuda)  # valid on CUDA (checked without a device)
    with pytest.raises(ConfigError, match=r"^impl.cuda_graphs=true needs a CUDA device"):
        resolve_runtime(ImplConfig(device="cpu", compile=True, cuda_graphs=True))
    with pytest.raises(ConfigError, match="impl.compile=true"):
        check_compile_options(ImplConfig(compile=False, cuda_graphs=True), cuda)
    with pytest.raises(ConfigError, match="compile_mode"):
        check_compile_options(ImplConfig(compile=True, cuda_graphs=True,
                                         compile_mode="max-autotune-no-cudagraphs"), cuda)


@pytest.mark.parametrize("name", ["bert-tiny", "llama-tiny", "ltg-bert-tiny"])
def test_flash_attn_request_is_a_config_error_when_unusable(name):
    arch = tiny_arch(CONFIG_DIR / "arch" / f"{name}.yaml", attention_impl="flash-attn")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="flash-attn"):
            build_model(arch, VOCAB)
        return
    if arch.position_embedding == "relative":  # flash-attn cannot add the bias
        with pytest.raises(ConfigError, match="relative"):
            build_model(arch, VOCAB)
    else:
        build_model(arch, VOCAB)


class _Loss(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": x.sum()}


class _Breaks(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return x + 1


def test_compile_model_makes_a_graph_break_an_error():
    torch._dynamo.reset()
    compiled = compile_model(_Breaks(), ImplConfig(compile=True))
    with pytest.raises(torch._dynamo.exc.Unsupported):
        compiled(torch.ones(2))
