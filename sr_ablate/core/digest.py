"""SHA-256 of files: the one helper behind every file hash sr_ablate records (evaluation sets,
VGG19 weights, downloaded archives). Standard library only: anything may import it."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the bytes of ``path``, read in 1 MiB chunks (any size of file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
