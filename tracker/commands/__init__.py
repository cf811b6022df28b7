"""The tracker's command-line tools (console entry points in pyproject.toml)."""
