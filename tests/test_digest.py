"""One SHA-256 helper for files: evaluation-set hashes, the VGG19 weights tag and downloaded
archives all go through ``core.digest.sha256_file``; the recorded values are unchanged."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import sr_ablate
from sr_ablate.core.digest import sha256_file
from sr_ablate.core.evaluate import files_sha256


def test_sha256_file_reads_files_larger_than_its_chunk(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    assert sha256_file(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(tmp_path / "empty.bin")) == hashlib.sha256(b"").hexdigest()


def test_evaluation_set_hash_is_the_one_runs_already_record(tmp_path):
    """``eval.<set>.sha256`` (and so ``eval.fingerprint``) must not change: runs logged
    before and after stay comparable."""
    for name, data in [("b.png", b"second"), ("a.png", b"first"), ("c.png", b"")]:
        (tmp_path / name).write_bytes(data)
    paths = list(tmp_path.iterdir())
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    assert files_sha256(paths) == h.hexdigest()


def test_no_other_file_hashing_in_the_package():
    """The hashlib.sha256 calls left hash text (config, fingerprint) or combine digests;
    files are hashed by sha256_file only."""
    root = Path(sr_ablate.__file__).parent
    users = {str(p.relative_to(root)) for p in root.rglob("*.py")
             if re.search(r"\bsha256_file\(", p.read_text()) and p.name != "digest.py"}
    assert {"core/evaluate.py", "training/losses.py", "data/download.py"} <= users
    stray = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"hashlib\.\w+\(.*(read_bytes|\.read\()|\.update\(chunk\)", line)
             and p.name != "digest.py"]
    assert stray == []
