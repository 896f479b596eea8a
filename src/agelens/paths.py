"""Where agelens keeps fetched models: `$AGELENS_HOME`, default the user cache dir."""

from __future__ import annotations

import os
from pathlib import Path


def agelens_home() -> Path:
    """The cache root: `$AGELENS_HOME` if set, else the platform's user cache dir + `agelens`."""
    configured = os.environ.get("AGELENS_HOME")
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("agelens"))


def models_dir() -> Path:
    """Folder holding one sub-folder per fetched model."""
    return agelens_home() / "models"


def packages_dir() -> Path:
    """Folder holding the verified registry archives the models were taken from."""
    return agelens_home() / "packages"
