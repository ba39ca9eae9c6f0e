"""Prefect flows: thin sequencing of the stages in fm21.stages."""
