"""ntng_assets from NTNG's Zenodo record, served locally in Zenodo's format (no internet here):
file list with size and MD5, resume with HTTP Range, the C4 subset as a local corpus."""

import hashlib
import http.server
import io
import json
import pickle
import tarfile
import threading

import numpy as np
import pytest

from cramming.config import compose, load_pretrain_config
from cramming.data.binary import BinaryCorpus
from cramming.pretrain import run_pretraining
from efficient_training.rho_loss import IrreducibleLosses
from ntng_assets import download_c4_subset, download_il_losses, zenodo
from ntng_assets.download import DownloadError


class ZenodoServer:
    """A local server answering ``/api/records/<id>`` and the files, with Range support."""

    def __init__(self, files: dict[str, bytes], record: int = zenodo.RECORD):
        self.files, self.record, self.ranges = files, record, []
        self.checksums = {n: "md5:" + hashlib.md5(b).hexdigest() for n, b in files.items()}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 (http.server API)
                base = f"http://127.0.0.1:{self.server.server_port}"
                if self.path == f"/api/records/{server.record}":
                    body = json.dumps({"id": server.record, "files": [
                        {"key": name, "size": len(data), "checksum": server.checksums[name],
                         "links": {"self": f"{base}/api/records/{server.record}/files/{name}"
                                           f"/content"}}
                        for name, data in server.files.items()]}).encode()
                    return self._send(200, body)
                name = self.path.split("/files/")[-1].removesuffix("/content")
                if name not in server.files:
                    return self._send(404, b"")
                data, start = server.files[name], 0
                if "Range" in self.headers:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    server.ranges.append(start)
                    return self._send(206, data[start:])
                return self._send(200, data)

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(files):
        servers.append(ZenodoServer(files))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_record_file_list_and_resumed_download_are_checked(serve, tmp_path):
    payload = np.random.default_rng(0).bytes(300_000)
    server = serve({"il_losses_c4.tar": payload, "other.bin": b"x"})
    files = zenodo.record_files(server.base)
    entry = files["il_losses_c4.tar"]
    assert entry.size == len(payload) and entry.checksum == server.checksums[entry.name]

    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "il_losses_c4.tar.part").write_bytes(payload[:100_000])  # an interrupted transfer
    path = zenodo.fetch("il_losses_c4.tar", dest, server.base)
    assert path.read_bytes() == payload and server.ranges == [100_000]
    assert (dest / "il_losses_c4.tar.sha256").read_text().startswith(
        hashlib.sha256(payload).hexdigest())

    path.unlink()
    (dest / "il_losses_c4.tar.part").write_bytes(b"garbage!" * 100)  # not a prefix
    with pytest.raises(DownloadError, match="MD5 .* does not match"):
        zenodo.fetch("il_losses_c4.tar", dest, server.base)
    assert not (dest / "il_losses_c4.tar.part").exists()
    with pytest.raises(DownloadError, match="has no file nope.tar"):
        zenodo.fetch("nope.tar", dest, server.base)


def test_il_losses_from_zenodo_become_our_npz(serve, tmp_path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for number, chunk in enumerate([{0: 1.5, 2: 0.25}, {1: 3.0}]):
            data = pickle.dumps(chunk)  # NTNG's dict_chunk_<n>.pkl files
            info = tarfile.TarInfo(f"examples_to_loss/dict_chunk_{number}.pkl")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    server = serve({"il_losses_mp.tar": archive.getvalue()})
    out = download_il_losses.main(["--dataset", "mp", "--zenodo", server.base,
                                   "--dest", str(tmp_path)])
    il = IrreducibleLosses.load(out)
    assert il.ids.tolist() == [0, 1, 2] and il.losses.tolist() == [1.5, 3.0, 0.25]


def ntng_corpus(folder, documents: list[str], seq_length: int = 16):
    """A processed corpus as NTNG saved it: input_ids rows, documents ended by <sep>."""
    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = {"unk_token": "<unk>", "sep_token": "<sep>", "cls_token": "<cls>",
               "pad_token": "<pad>", "mask_token": "<mask>"}
    core = Tokenizer(models.WordPiece(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(documents, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=list(special.values())))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **special)
    stream = []
    for text in documents:
        stream += core.encode(text).ids + [tokenizer.sep_token_id]
    rows = [stream[i:i + seq_length] for i in range(0, len(stream) - seq_length + 1, seq_length)]
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(folder))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    (folder / "model_config.json").write_text("{}")
    return tokenizer, rows


def test_c4_subset_from_zenodo_is_a_local_corpus(serve, tmp_path):
    documents = [f"document {i} says the quick brown fox number {i} jumps" for i in range(30)]
    corpus = tmp_path / "build" / "c4-subset-random_abc123"
    tokenizer, rows = ntng_corpus(corpus, documents)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:bz2") as tar:
        tar.add(corpus, arcname=corpus.name)
    server = serve({download_c4_subset.ARCHIVE: archive.getvalue()})

    out = download_c4_subset.main(["--zenodo", server.base, "--dest", str(tmp_path / "c4")])
    binary = BinaryCorpus(out)
    pieces = [binary.document(i).tolist() for i in range(len(binary))]
    sep = tokenizer.sep_token_id
    expected = [p for row in rows for p in
                np.split(np.asarray(row), np.flatnonzero(np.asarray(row) == sep))]
    expected = [[t for t in p.tolist() if t != sep] for p in expected]
    assert pieces == [p for p in expected if p]
    assert sep not in {t for piece in pieces for t in piece}

    # ... and trains as data=c4-subset-random (2 steps, tiny model)
    overrides = ["arch=bert-tiny", "data=c4-subset-random", "data.source=binary",
                 f"data.paths=[{out}]", "data.seq_length=16", "data.val_fraction=0.1",
                 "impl=cpu", "impl.microbatch_size=4", "impl.progress_bar=false",
                 "train.batch_size=4", "train.batch_size_ramp=0", "budget_kind=steps",
                 "budget=2", "train.validate_at_end=false", f"base_dir={tmp_path / 'runs'}"]
    summary = run_pretraining(load_pretrain_config(compose("pretrain", overrides)),
                              tmp_path / "run")
    assert summary["steps"] == 2
