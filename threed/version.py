"""The version of threed: the one place it is written (pyproject.toml reads it; CHANGELOG.md lists the changes)."""

__version__ = "0.1.0"
