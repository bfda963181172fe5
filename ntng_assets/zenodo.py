"""NTNG's assets on Zenodo (record 8279728): the file list with sizes and checksums.

NTNG's last commit (JeanKaddour/NoTrainNoGain, bert/README.md) moved its C4 subset and
irreducible losses from Dropbox to https://doi.org/10.5281/zenodo.8279728. Zenodo publishes
each file's size and MD5 in the record's metadata (``/api/records/<id>``); they are read from
there at download time and checked after the transfer, next to the SHA-256 of
``checksums.json`` once one is recorded.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ntng_assets.download import DownloadError, download

ZENODO = "https://zenodo.org"
RECORD = 8279728
# The files NTNG's bert/README.md names (JeanKaddour/NoTrainNoGain, bert/README.md).
FILES = ("c4-subset-random.tar.bz2", "il_losses_c4.tar", "il_losses_bcwk.tar",
         "il_losses_mp.tar")


@dataclass(frozen=True)
class RecordFile:
    """One file of a Zenodo record: where to fetch it and what it must be."""

    name: str
    url: str
    size: int | None
    checksum: str | None  # "md5:<hex>" as Zenodo publishes it


def record_files(base: str = ZENODO, record: int = RECORD) -> dict[str, RecordFile]:
    """The record's files by name, from its metadata (``<base>/api/records/<record>``)."""
    url = f"{base.rstrip('/')}/api/records/{record}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            metadata = json.load(response)
    except (OSError, ValueError) as error:
        raise DownloadError(f"Cannot read the Zenodo record {url}: {error}; check the "
                            f"connection or pass --zenodo <mirror>.") from None
    files = {}
    for entry in metadata.get("files", []):
        name = entry.get("key") or entry.get("filename")
        link = (entry.get("links") or {}).get("self") or \
            f"{base.rstrip('/')}/records/{record}/files/{urllib.parse.quote(name)}?download=1"
        files[name] = RecordFile(name, link, entry.get("size"), entry.get("checksum"))
    return files


def fetch(name: str, folder: str | Path, base: str = ZENODO, record: int = RECORD) -> Path:
    """Download file ``name`` of the record into ``folder`` (resumable, size and MD5 checked)."""
    files = record_files(base, record)
    if name not in files:
        raise DownloadError(f"Zenodo record {record} has no file {name}; it has "
                            f"{', '.join(sorted(files)) or 'none'}.")
    entry = files[name]
    return download(entry.url, folder, name=name, size=entry.size,
                    checksums=[entry.checksum] if entry.checksum else [])
