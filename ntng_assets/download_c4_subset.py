"""Download NTNG's randomized C4 subset (their pre-tokenized WordPiece-32768 cache).

    python -m ntng_assets.download_c4_subset [--dest outputs/ntng/c4-subset] [--url URL]

Resumes an interrupted download and checks the SHA-256 (see download.py). The archive holds
NTNG's processed dataset folder (their cramming format), for reproducing their setup; for our
pipeline use ``data=c4`` or point ``data=jsonl`` / ``data=text`` at the raw text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ntng_assets.download import download, extract, file_name

URL = ("https://www.dropbox.com/s/l2v3v2wgwuiwkxq/"
       "c4-subset_WordPiecex32768_e0501aeb87699de7500dc91a54939f44.zip?dl=1")


def main(argv: list[str] | None = None) -> Path:
    """Download (resumable, checked) and unpack the subset; returns the folder."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", default="outputs/ntng/c4-subset")
    parser.add_argument("--url", default=URL)
    parser.add_argument("--sha256", default=None, help="expected checksum of the archive")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    archive = download(args.url, dest / "download", args.sha256)
    out = extract(archive, dest / Path(file_name(args.url)).stem)
    print(out)
    return out


if __name__ == "__main__":
    main()
