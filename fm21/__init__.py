"""fm21: a staged pipeline for 4M-21-style any-to-any vision models."""

__version__ = "0.1.0"
