"""Network specialists are tested offline: hubs off, a private weights cache, and any socket
connect or DNS lookup fails the test (weights come from checkpoints saved in tmp_path)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    monkeypatch.setenv("FM21_WEIGHTS_CACHE", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access in a test: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
