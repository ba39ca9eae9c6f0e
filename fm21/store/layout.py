"""Where every stage of a run reads and writes, under one ``workdir``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("ingest", "pseudolabel", "tokenizers", "tokens", "train", "evaluate")


@dataclass(frozen=True)
class Workdir:
    root: Path

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest(self, stage: str) -> Path:
        return self.stage_dir(stage) / "manifest.json"

    @property
    def shards_dir(self) -> Path:
        return self.stage_dir("ingest") / "shards"

    @property
    def rejects(self) -> Path:
        return self.stage_dir("ingest") / "rejects.jsonl"

    @property
    def labels_uri(self) -> Path:
        return self.stage_dir("pseudolabel") / "labels.lance"

    @property
    def tokenizers_dir(self) -> Path:
        return self.stage_dir("tokenizers")

    @property
    def tokens_uri(self) -> Path:
        return self.stage_dir("tokens") / "tokens.lance"

    @property
    def checkpoints_dir(self) -> Path:
        return self.stage_dir("train") / "checkpoints"

    @property
    def reports_dir(self) -> Path:
        return self.stage_dir("evaluate")

    def shard_paths(self) -> list[Path]:
        return sorted(self.shards_dir.glob("shard-*.tar"))
