"""Where the benchmarks cache a profile's pretrained reference model between runs.

The cache is keyed by what decides that model: the profile file and the code that generates
the built-in corpus, tokenizes it, builds and pretrains the model. A change to any of them
builds it again, so a benchmark never measures a model made from an older corpus or code.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("data", "model", "train", "pipeline.py", "config.py")
"""Modules (and packages: every module in them) of monollm whose code decides the pretrained reference model."""


def folder(prefix: str, profile_path: str, seed: int | None = None) -> str:
    """A folder under the temp dir for `prefix`, keyed by the profile, `seed` and SOURCES."""
    digest = hashlib.sha256()
    with open(profile_path, "rb") as f:
        digest.update(f.read())
    for name in SOURCES:
        path = os.path.join(ROOT, "monollm", name)
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py")) \
            if os.path.isdir(path) else [path]
        for file in files:
            with open(file, "rb") as f:
                digest.update(f.read())
    digest.update(repr(seed).encode())
    return os.path.join(tempfile.gettempdir(), f"{prefix}-{digest.hexdigest()[:12]}")
