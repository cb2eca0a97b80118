"""A built corpus read back: its manifests' rows and its files' digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from broadclass.data.manifest import read_manifest


def rows_of(manifests: dict[str, Path]) -> dict[str, list[dict]]:
    return {split: read_manifest(path) for split, path in manifests.items()}


def file_digests(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in skip
    }
