"""Progress a long job writes as it goes: finished chunks of its work, each written atomically, that a rerun of
the same job (same inputs, same settings) reads back instead of computing again.

The store lives beside the job's output, not in it (Snakemake removes an unfinished job's outputs), and is
removed once the output is in place. Its manifest records the job's inputs (every file's size and
modification time) and settings: a store written under other inputs or settings is discarded, never reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from finetox.tables import atomic_path


def fingerprint(paths: list[str | Path], settings) -> str:
    """The job's inputs (size and modification time of every file under each path) and settings, as text."""
    files = {}
    for path in map(Path, paths):
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                stat = file.stat()
                files[str(file)] = [stat.st_size, stat.st_mtime_ns]
    return json.dumps({"inputs": files, "settings": settings}, sort_keys=True, default=str)


def content_key(*parts) -> str:
    """A short digest of a chunk's content (what it asks the engine), naming its file."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


class ChunkStore:
    """Finished chunks of one job, in `directory`: `<index>-<key>.parquet`, with the job's fingerprint."""

    def __init__(self, directory: str | Path, job_fingerprint: str):
        self.directory = Path(directory)
        manifest = self.directory / "job.json"
        if not manifest.is_file() or manifest.read_text() != job_fingerprint:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True)
            with atomic_path(manifest) as tmp:
                Path(tmp).write_text(job_fingerprint)
        self.found = len(list(self.directory.glob("*.parquet")))  # chunks left by an earlier, unfinished run

    def _path(self, index: int, key: str) -> Path:
        return self.directory / f"{index:05d}-{key}.parquet"

    def get(self, index: int, key: str) -> pd.DataFrame | None:
        path = self._path(index, key)
        return pd.read_parquet(path) if path.is_file() else None

    def put(self, index: int, key: str, table: pd.DataFrame) -> None:
        with atomic_path(self._path(index, key)) as tmp:
            table.to_parquet(tmp, index=False)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def store_beside(output: str | Path) -> Path:
    """Where the progress of the job writing `output` is kept: a hidden sibling of it."""
    output = Path(output)
    return output.with_name(f".{output.name}.progress")

