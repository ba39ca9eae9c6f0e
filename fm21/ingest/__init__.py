"""Ingest stage: folders, webdataset shards, synthetic scenes -> shards + rejects."""
