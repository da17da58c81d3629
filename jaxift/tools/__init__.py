"""Command-line tools, each run as `python -m jaxift.tools.<name>` with absl flags (`--help`).

A tool whose functions are also called from Python (tests, other tools) defines its flags in
`define_flags(flag_values)`, called under `__main__` only, so importing it never clashes with flags
of the same names elsewhere; `parse_flags` gives such a caller its own parsed set.
"""
from collections.abc import Callable, Sequence

from absl import flags


def parse_flags(define: Callable[[flags.FlagValues], None], argv: Sequence[str],
                program: str = "jaxift-tool") -> flags.FlagValues:
  """A fresh FlagValues with the tool's flags, parsed from `argv` (without the program name):
  attribute access like the parsed flags of a run (`values.output_dir`)."""
  values = flags.FlagValues()
  define(values)
  values([program, *argv])
  return values
