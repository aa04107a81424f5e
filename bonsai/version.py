"""The installed package's version (for `bonsai --version` and the model card)."""

from __future__ import annotations


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bonsai")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"
