"""Command-line tools, each run as `python -m jaxift.tools.<name>` with absl flags (`--help`).

A tool whose functions are also called from Python (tests, other tools) defines its flags in
`define_flags(flag_values)`, called under `__main__` only, so importing it never clashes with flags
of the same names elsewhere; `parse_flags` gives such a caller its own parsed set.
"""
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging


def parse_flags(define: Callable[[flags.FlagValues], None], argv: Sequence[str],
                program: str = "jaxift-tool") -> flags.FlagValues:
  """A fresh FlagValues with the tool's flags, parsed from `argv` (without the program name):
  attribute access like the parsed flags of a run (`values.output_dir`)."""
  values = flags.FlagValues()
  define(values)
  values([program, *argv])
  return values


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` with INFO logs off unless --verbosity is given: Orbax logs every file it
  reads or writes at INFO, which would bury a tool's own output."""

  def quiet_main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    # Not returned: absl exits with a returned value as the status, and the tools' mains return
    # their results (a dict) for callers in Python.
    main(argv)

  app.run(quiet_main)
