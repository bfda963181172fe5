"""Download NTNG's published irreducible losses and convert them for ``method=rho_loss``.

    python -m ntng_assets.download_il_losses --dataset c4 [--dest outputs/ntng/il] \\
        [--fingerprint <data fingerprint>]          # or bcwk / mp (MiniPile)

The files come from NTNG's Zenodo record 8279728 (``il_losses_<dataset>.tar``, size and MD5
checked, resumable). They hold pickled ``{example_index: loss}`` chunks, read with a
restricted unpickler (plain ints/floats and numpy scalars only, never arbitrary objects) and
written as one ``il_losses.npz`` (:class:`efficient_training.rho_loss.IrreducibleLosses`).
NTNG's keys are positions in *their* processed stream, so the file only fits a run on the
identical corpus and preprocessing; ``method=rho_loss`` checks that every training example id
has a loss and refuses to start otherwise.
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path

import numpy as np

from efficient_training.rho_loss import IrreducibleLosses
from ntng_assets import zenodo
from ntng_assets.download import DownloadError, download, extract, flatten

DATASETS = ("c4", "bcwk", "mp")  # NTNG's names (JeanKaddour/NoTrainNoGain, bert/README.md)
_ALLOWED = {("builtins", "dict"), ("builtins", "float"), ("builtins", "int"),
            ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar")}


class _NumbersOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 (pickle API)
        if (module, name) not in _ALLOWED:
            raise DownloadError(f"refusing to unpickle {module}.{name} from a downloaded file")
        return super().find_class(module, name)


def read_chunk(path: Path) -> dict[int, float]:
    """One NTNG chunk: ``{example_index: loss}``."""
    data = _NumbersOnly(io.BytesIO(path.read_bytes())).load()
    if not isinstance(data, dict):
        raise DownloadError(f"{path} does not hold a dict of losses")
    return {int(k): float(v) for k, v in data.items()}


def convert(folder: Path, out: Path, fingerprint: str = "") -> Path:
    """All chunk files in ``folder`` -> one ``.npz`` for ``method.rho_loss.il_losses``."""
    losses: dict[int, float] = {}
    chunks = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for chunk in chunks:
        losses.update(read_chunk(chunk))
    if not losses:
        raise DownloadError(f"no loss chunks found in {folder}")
    ids = np.fromiter(losses.keys(), dtype=np.int64, count=len(losses))
    values = np.fromiter(losses.values(), dtype=np.float32, count=len(losses))
    return IrreducibleLosses(ids, values, fingerprint).save(out)


def main(argv: list[str] | None = None) -> Path:
    """Download (resumable, checked), unpack and convert; returns the ``.npz`` path."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=DATASETS, default="c4")
    parser.add_argument("--dest", default="outputs/ntng/il")
    parser.add_argument("--url", default=None, help="fetch this URL instead of Zenodo's file")
    parser.add_argument("--sha256", default=None, help="expected checksum of the archive")
    parser.add_argument("--zenodo", default=zenodo.ZENODO, help="Zenodo (or a mirror) base URL")
    parser.add_argument("--fingerprint", default="",
                        help="data fingerprint of the run the losses belong to")
    args = parser.parse_args(argv)
    dest = Path(args.dest) / args.dataset
    name = f"il_losses_{args.dataset}.tar"
    if args.url:
        archive = download(args.url, dest / "download", args.sha256)
    else:
        archive = zenodo.fetch(name, dest / "download", args.zenodo)
    chunks = extract(archive, dest / "chunks")
    flatten(chunks)
    out = convert(chunks, dest / "il_losses.npz", args.fingerprint)
    print(out)
    return out


if __name__ == "__main__":
    main()
