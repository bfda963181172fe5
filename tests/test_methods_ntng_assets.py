"""ntng_assets: resumable, checksummed downloads and the IL conversion, on local files."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from efficient_training.rho_loss import IrreducibleLosses
from ntng_assets import download_il_losses
from ntng_assets.download import DownloadError, download, extract


def test_download_resumes_a_partial_file_and_checks_the_sha256(tmp_path):
    source = tmp_path / "asset.bin"
    payload = np.random.default_rng(0).bytes(3 << 20)
    source.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "asset.bin.part").write_bytes(payload[:1_000_000])  # an interrupted transfer
    path = download(source.as_uri(), dest, sha256=digest)
    assert path.read_bytes() == payload and not (dest / "asset.bin.part").exists()
    assert download(source.as_uri(), dest, sha256=digest) == path  # complete: not refetched

    (dest / "asset.bin").unlink()
    (dest / "asset.bin.part").write_bytes(b"garbage" * 1000)  # corrupt partial data
    with pytest.raises(DownloadError, match="does not match"):
        download(source.as_uri(), dest, sha256=digest)
    assert not (dest / "asset.bin.part").exists()


def test_download_without_checksum_records_one(tmp_path):
    source = tmp_path / "x.tar"
    source.write_bytes(b"abc")
    download(source.as_uri(), tmp_path / "d")
    assert (tmp_path / "d" / "x.tar.sha256").read_text().startswith(
        hashlib.sha256(b"abc").hexdigest())


def test_extract_refuses_members_that_escape(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match="escape"):
        extract(archive, tmp_path / "out")


def test_il_losses_download_converts_ntng_chunks(tmp_path):
    chunks = tmp_path / "outputs" / "losses"
    chunks.mkdir(parents=True)
    (chunks / "chunk_0.pkl").write_bytes(pickle.dumps({0: 1.5, 2: 0.25}))
    (chunks / "chunk_1.pkl").write_bytes(pickle.dumps({1: np.float32(3.0)}))
    archive = tmp_path / "minipile_losses.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "outputs", arcname="outputs")
    out = download_il_losses.main(["--url", archive.as_uri(), "--dest", str(tmp_path / "il"),
                                   "--fingerprint", "abc"])
    il = IrreducibleLosses.load(out)
    assert il.ids.tolist() == [0, 1, 2] and il.losses.tolist() == [1.5, 3.0, 0.25]
    assert il.fingerprint == "abc"


def test_il_chunks_with_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    chunk = tmp_path / "c.pkl"
    chunk.write_bytes(pickle.dumps({0: Evil()}))
    with pytest.raises(DownloadError, match="refusing to unpickle"):
        download_il_losses.read_chunk(chunk)
