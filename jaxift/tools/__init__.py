"""Command-line tools, each run as `python -m jaxift.tools.<name>` with absl flags (`--help`)."""
