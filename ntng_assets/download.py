"""Resumable, checksummed downloads and safe archive extraction.

``download(url, folder)`` writes to ``<name>.part`` and continues an interrupted transfer
where it stopped (HTTP ``Range`` requests; ``file://`` URLs seek), then verifies the file
against its expected checksums (``md5:`` as Zenodo publishes them, ``sha256:`` from the
caller or ``checksums.json``) and size before renaming it into place. Without a recorded
SHA-256 the computed one is printed and recorded next to the file (``<name>.sha256``) so a
later re-download is checked against it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

CHECKSUMS = Path(__file__).resolve().parent / "checksums.json"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A transfer, checksum or archive problem, with what to do about it."""


def digest_of(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256``, ``md5``, any ``hashlib`` name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return digest_of(path, "sha256")


def _mismatch(path: Path, checksums: list[str]) -> str | None:
    """The first ``algo:hex`` of ``checksums`` that ``path`` fails, with what it has instead."""
    for checksum in checksums:
        algorithm, _, expected = checksum.partition(":")
        actual = digest_of(path, algorithm)
        if actual != expected.lower():
            return f"{algorithm.upper()} {actual} does not match the expected {expected}"
    return None


def known_checksum(name: str) -> str | None:
    """The recorded SHA-256 of asset file ``name`` (``checksums.json``), if any."""
    if not CHECKSUMS.is_file():
        return None
    return json.loads(CHECKSUMS.read_text()).get(name)


def file_name(url: str) -> str:
    """Last path component of ``url`` without its query (``x.tar?dl=1`` -> ``x.tar``)."""
    return Path(urllib.parse.urlparse(url).path).name


def _open(url: str, offset: int):
    """(stream, total size or None, whether the stream starts at ``offset``)."""
    if urllib.parse.urlparse(url).scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        handle = open(path, "rb")
        handle.seek(offset)
        return handle, path.stat().st_size, True
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    response = urllib.request.urlopen(request, timeout=60)  # noqa: S310 (http/https/file only)
    resumed = offset > 0 and response.status == 206
    length = response.headers.get("Content-Length")
    total = (int(length) + (offset if resumed else 0)) if length else None
    return response, total, resumed or offset == 0


def download(url: str, folder: str | Path, sha256: str | None = None,
             name: str | None = None, checksums: list[str] | tuple[str, ...] = (),
             size: int | None = None) -> Path:
    """Fetch ``url`` into ``folder`` (resuming a ``.part`` file) and verify it.

    ``checksums`` are ``algo:hex`` strings (e.g. Zenodo's ``md5:...``); ``sha256`` (or the
    value in ``checksums.json``) is checked too; ``size`` is the expected byte count.
    """
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise DownloadError(f"Unsupported URL scheme: {url}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or file_name(url)
    target, part = folder / name, folder / f"{name}.part"
    expected = sha256 or known_checksum(name)
    wanted = [*checksums, *([f"sha256:{expected}"] if expected else [])]
    if target.is_file():
        if _mismatch(target, wanted) is None:
            print(f"{target} already complete")
            return target
        target.unlink()  # wrong content: start over below
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()  # longer than the file: not a prefix of it
        offset = 0
    total = None
    if size is None or offset < size:  # a complete .part needs no request (HTTP 416)
        stream, total, from_offset = _open(url, offset)
        if not from_offset:
            offset = 0  # server ignored the range: restart
        with stream, open(part, "ab" if offset else "wb") as out:
            if offset:
                print(f"resuming {name} at {offset} bytes")
            for block in iter(lambda: stream.read(CHUNK), b""):
                out.write(block)
    got = part.stat().st_size
    total = size if size is not None else total
    if total is not None and got < total:
        raise DownloadError(f"{name}: got {got} of {total} bytes; rerun to resume.")
    problem = _mismatch(part, wanted)
    if problem is None and total is not None and got != total:
        problem = f"size {got} does not match the expected {total}"
    if problem is not None:
        part.unlink()
        raise DownloadError(f"{name}: {problem}; the partial file was removed, rerun to "
                            f"download again.")
    actual = sha256_of(part)
    part.rename(target)
    if expected is None:
        (folder / f"{name}.sha256").write_text(f"{actual}  {name}\n")
        print(f"{name}: no published checksum; SHA-256 {actual} recorded in {name}.sha256")
    return target


def _safe_members(names: list[str], destination: Path) -> None:
    root = destination.resolve()
    for member in names:
        resolved = (root / member).resolve()
        if resolved != root and root not in resolved.parents:
            raise DownloadError(f"Archive member {member!r} would escape {destination}.")


def extract(archive: str | Path, destination: str | Path) -> Path:
    """Unpack a .zip or tar archive into ``destination`` (refusing paths that escape it)."""
    archive, destination = Path(archive), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            _safe_members(handle.namelist(), destination)
            handle.extractall(destination)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as handle:
            members = handle.getmembers()
            _safe_members([m.name for m in members], destination)
            if any(m.issym() or m.islnk() for m in members):
                raise DownloadError(f"{archive} contains links; refusing to extract it.")
            handle.extractall(destination)
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive.")
    return destination


def flatten(folder: str | Path) -> None:
    """Move every file below ``folder`` up into ``folder`` itself."""
    folder = Path(folder)
    for path in [p for p in folder.rglob("*") if p.is_file() and p.parent != folder]:
        shutil.move(str(path), folder / path.name)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        sub.rmdir()
