"""Where every stage of a run reads and writes, under one ``workdir``: a local path (every
location is a ``pathlib.Path``) or an object-store URI such as ``s3://bucket/run`` (every
location is a ``fm21.store.fs.UriPath``, which reads and writes through ``pyarrow.fs``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fm21.store.fs import Location, UriPath, as_location

STAGES = ("ingest", "pseudolabel", "tokenizers", "tokens", "train", "evaluate")


@dataclass(frozen=True)
class Workdir:
    root: Path | UriPath  # a str is accepted: a URI becomes a UriPath, anything else a Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", as_location(self.root))

    def stage_dir(self, stage: str) -> Location:
        return self.root / stage

    def manifest(self, stage: str) -> Location:
        return self.stage_dir(stage) / "manifest.json"

    @property
    def shards_dir(self) -> Location:
        return self.stage_dir("ingest") / "shards"

    @property
    def rejects(self) -> Location:
        return self.stage_dir("ingest") / "rejects.jsonl"

    @property
    def labels_uri(self) -> Location:
        return self.stage_dir("pseudolabel") / "labels.lance"

    @property
    def tokenizers_dir(self) -> Location:
        return self.stage_dir("tokenizers")

    @property
    def tokens_uri(self) -> Location:
        return self.stage_dir("tokens") / "tokens.lance"

    @property
    def checkpoints_dir(self) -> Location:
        return self.stage_dir("train") / "checkpoints"

    @property
    def reports_dir(self) -> Location:
        return self.stage_dir("evaluate")

    def shard_paths(self) -> list[Location]:
        return sorted(self.shards_dir.glob("shard-*.tar"))
