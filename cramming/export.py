"""Export a pretrained model to a folder that Hugging Face ``transformers`` loads.

    python -m cramming.export outputs/run1/pretrain/<date>_<time> hf/run1
    python -m cramming.export outputs/run1/pretrain/<date>_<time>/model hf/run1 --push-to-hub me/r1

The folder holds ``config.json`` (with ``auto_map``), ``model.safetensors``, the tokenizer and
``modeling_cramming.py``, which carries our own model code (the ``cramming.architectures``
package and the modules it imports, as they are at export time) and builds the model from it.
So ``AutoModelForMaskedLM`` / ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification``
``.from_pretrained(folder, trust_remote_code=True)`` give exactly our model, whatever shape
our model modules have, without cramming installed. The shipped package is imported under a
private name (``_cramming_export_<hash>``), so it never clashes with an installed cramming.
Cramming registers its model with the Auto classes the same way (JonasGeiping/cramming,
cramming/architectures/crammed_bert.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from cramming.errors import CheckpointError, CrammingError

PACKAGE_ROOT = Path(__file__).resolve().parent
_IMPORT = re.compile(r"^\s*(?:from|import)\s+(cramming(?:\.\w+)*)", re.MULTILINE)
_REWRITE = re.compile(r"^(\s*)(from|import)(\s+)cramming\b", re.MULTILINE)

# The parts of modeling_cramming.py around the embedded sources. Our model objects expose
# encode(input_ids, attention_mask, token_type_ids) -> hidden states and predict(hidden).
_MODELING_HEAD = '''"""Cramming models for transformers (written by cramming.export)."""

import importlib
import importlib.abc
import importlib.util
import inspect
import sys

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (
    CausalLMOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
)

'''

_MODELING_BODY = '''

class _SourceLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports PACKAGE and its submodules from SOURCES (relative path -> source text)."""

    def _key(self, name):
        rel = name[len(PACKAGE):].lstrip(".").replace(".", "/")
        package = f"{rel}/__init__.py" if rel else "__init__.py"
        if package in SOURCES:
            return package, True
        if f"{rel}.py" in SOURCES:
            return f"{rel}.py", False
        return None, False

    def find_spec(self, name, path=None, target=None):
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            return None
        key, is_package = self._key(name)
        if key is None:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=is_package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        key, _ = self._key(module.__name__)
        module.__file__ = f"<{PACKAGE}>/{key}"  # no file on disk; modules may read the name
        exec(compile(SOURCES[key], module.__file__, "exec"), module.__dict__)


def _shipped(module):
    if not any(isinstance(f, _SourceLoader) and getattr(f, "package", None) == PACKAGE
               for f in sys.meta_path):
        loader = _SourceLoader()
        loader.package = PACKAGE
        sys.meta_path.insert(0, loader)
    return importlib.import_module(f"{PACKAGE}.{module}")


class CrammingConfig(PretrainedConfig):
    model_type = "cramming"

    def __init__(self, cramming_arch=None, vocab_size=30522, pooler="zero_index", head_dim=None,
                 classifier_dropout=0.1, **kwargs):
        self.cramming_arch = dict(cramming_arch or {})
        self.vocab_size = vocab_size
        self.pooler = pooler
        self.head_dim = head_dim
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)


class CrammingPreTrainedModel(PreTrainedModel):
    config_class = CrammingConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        schema = _shipped("config.schema")
        arch = schema.ArchConfig(**config.cramming_arch)
        self.model = _shipped("architectures").build_model(
            arch, vocab_size=config.vocab_size, pad_token_id=config.pad_token_id or 0)

    def _init_weights(self, module):
        pass  # our model initialises itself; pretrained weights come from the file

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load, then restore what loading on the meta device loses: computed buffers that
        are not in the state dict (e.g. position tables) and tied parameters."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        with torch.device("cpu"):
            fresh = _shipped("architectures").build_model(
                _shipped("config.schema").ArchConfig(**model.config.cramming_arch),
                vocab_size=model.config.vocab_size, pad_token_id=model.config.pad_token_id or 0)
        persistent = set(fresh.state_dict())
        inner = model.model
        for name, buffer in fresh.named_buffers():
            if name not in persistent:
                owner, _, leaf = name.rpartition(".")
                target = inner.get_submodule(owner) if owner else inner
                device = getattr(target, leaf).device
                target._buffers[leaf] = buffer.to(device)
        first = {}
        for name, parameter in fresh.named_parameters(remove_duplicate=False):
            if id(parameter) in first:  # tied in our model: tie again
                owner, _, leaf = name.rpartition(".")
                target = inner.get_submodule(owner) if owner else inner
                setattr(target, leaf, inner.get_parameter(first[id(parameter)]))
            else:
                first[id(parameter)] = name
        return loaded

    def get_input_embeddings(self):
        return self.model.get_input_embeddings() if hasattr(
            self.model, "get_input_embeddings") else None

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, causal=None):
        if causal is not None and "causal" in inspect.signature(self.model.encode).parameters:
            return self.model.encode(input_ids, attention_mask, token_type_ids, causal=causal)
        return self.model.encode(input_ids, attention_mask, token_type_ids)


class CrammingForMaskedLM(CrammingPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                **kwargs):
        logits = self.model.predict(self.encode(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(),
                                   ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)


class CrammingForCausalLM(CrammingPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                **kwargs):
        # Hybrid (GPT-BERT) models attend causally here; pure causal models always do.
        hidden = self.encode(input_ids, attention_mask, token_type_ids, causal=True)
        logits = self.model.predict(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                   labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


class CrammingForSequenceClassification(CrammingPreTrainedModel):
    """Pooled hidden state -> Linear(head_dim) -> Tanh -> dropout -> Linear(num_labels)."""

    def __init__(self, config):
        super().__init__(config)
        hidden = self.model.hidden_size
        head_dim = config.head_dim or hidden
        self.pooler = nn.Linear(hidden, head_dim)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(head_dim, config.num_labels)
        std = float(config.cramming_arch.get("init_std", 0.02))
        for layer in (self.pooler, self.classifier):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                **kwargs):
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        if self.config.pooler == "avg":
            mask = (torch.ones_like(input_ids) if attention_mask is None
                    else attention_mask).to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        else:
            pooled = hidden[:, 0]
        logits = self.classifier(self.dropout(torch.tanh(self.pooler(pooled))))
        loss = None
        if labels is not None:
            loss = (F.mse_loss(logits.squeeze(-1), labels.float()) if self.config.num_labels == 1
                    else F.cross_entropy(logits, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


def source_files() -> dict[str, str]:
    """Our model code: ``cramming/architectures`` and every cramming module it imports.

    Keys are paths relative to the ``cramming`` package; imports are followed, so whatever
    the architecture modules become, the export ships what they need.
    """
    files: dict[str, str] = {"__init__.py": (PACKAGE_ROOT / "__init__.py").read_text()}
    todo = [p.relative_to(PACKAGE_ROOT) for p in (PACKAGE_ROOT / "architectures").rglob("*.py")]
    while todo:
        rel = todo.pop()
        key = rel.as_posix()
        if key in files:
            continue
        text = (PACKAGE_ROOT / rel).read_text()
        files[key] = text
        for parent in rel.parents:  # every package on the way needs its __init__.py
            init = parent / "__init__.py"
            if parent != Path(".") and (PACKAGE_ROOT / init).is_file():
                todo.append(init)
        for name in _IMPORT.findall(text):
            parts = name.split(".")[1:]
            for n in range(len(parts), 0, -1):  # "cramming.x.y" may be module y or a name in x
                module = Path(*parts[:n])
                if (PACKAGE_ROOT / module / "__init__.py").is_file():
                    todo.append(module / "__init__.py")
                    break
                if (PACKAGE_ROOT / module.with_suffix(".py")).is_file():
                    todo.append(module.with_suffix(".py"))
                    break
    return dict(sorted(files.items()))


def modeling_source() -> str:
    """``modeling_cramming.py``: the wrappers plus our sources under a private package name.

    Each source is one ``repr`` line, so transformers' import scan sees only the wrapper's
    own imports (torch, transformers).
    """
    sources = source_files()
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:12]
    package = f"_cramming_export_{digest}"
    lines = [f"PACKAGE = {package!r}", "SOURCES = {"]
    for key, text in sources.items():
        rewritten = _REWRITE.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{package}", text)
        lines.append(f"    {key!r}: {rewritten!r},")
    lines.append("}")
    return _MODELING_HEAD + "\n".join(lines) + "\n" + _MODELING_BODY


def _family(model: Any) -> str:
    return "causal" if getattr(model.arch, "causal", False) else "masked"


def export_model(model: torch.nn.Module, tokenizer: Any, out: str | Path,
                 head: torch.nn.Module | None = None, num_labels: int | None = None) -> Path:
    """Write ``model`` (and, given a fine-tuned ``TaskModel`` as ``head``, its classifier)
    with ``tokenizer`` to ``out`` for ``from_pretrained(out, trust_remote_code=True)``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    causal = _family(model) == "causal"
    auto_map = {
        "AutoConfig": "modeling_cramming.CrammingConfig",
        "AutoModelForMaskedLM": "modeling_cramming.CrammingForMaskedLM",
        "AutoModelForCausalLM": "modeling_cramming.CrammingForCausalLM",
        "AutoModelForSequenceClassification": "modeling_cramming.CrammingForSequenceClassification",
    }
    main = "CrammingForCausalLM" if causal else "CrammingForMaskedLM"
    config: dict[str, Any] = {
        "model_type": "cramming", "architectures": [main], "auto_map": auto_map,
        "cramming_arch": dataclasses.asdict(model.arch), "vocab_size": int(model.vocab_size),
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "is_decoder": causal,
    }
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value.detach().cpu().clone().contiguous()
        seen.add(value.data_ptr())
    if head is not None:
        pooler, classifier = head.pooler[0], head.head
        if classifier.in_features != pooler.out_features:
            raise CheckpointError("Only sequence heads (no span features) can be exported.")
        config.update(architectures=["CrammingForSequenceClassification"],
                      num_labels=classifier.out_features, pooler=head.pool_scheme,
                      head_dim=pooler.out_features, classifier_dropout=head.dropout.p)
        tensors.update({"pooler.weight": pooler.weight, "pooler.bias": pooler.bias,
                        "classifier.weight": classifier.weight,
                        "classifier.bias": classifier.bias})
        tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    elif num_labels:
        config["num_labels"] = num_labels
    # Tied weights are stored twice (safetensors refuses shared storage); both load exactly.
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (out / "modeling_cramming.py").write_text(modeling_source())
    tokenizer.save_pretrained(str(out))
    return out


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the hub repository ``repo`` (needs a login and network)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    return str(api.upload_folder(repo_id=repo, folder_path=str(folder)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="pretraining run folder or its model/ folder")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="also upload the folder to this hub repository")
    args = parser.parse_args(argv)
    from cramming.backend.checkpoint import find_model_folder, load_model_folder

    try:
        folder = find_model_folder(path=args.source)
        loaded = load_model_folder(folder)
        out = export_model(loaded.model, loaded.tokenizer, args.out)
        family = "CausalLM" if loaded.arch.causal else "MaskedLM"
        print(f"Exported {folder} to {out}: AutoModelFor{family}.from_pretrained("
              f"{str(out)!r}, trust_remote_code=True)")
        if args.push_to_hub:
            print(f"Pushed: {push_to_hub(out, args.push_to_hub)}")
    except CrammingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
