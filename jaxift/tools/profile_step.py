"""Where one train step's time goes, op by op: jaxift and PyTorch + transformers side by side.

  python -m jaxift.tools.profile_step --shape=smollm2-135m --layers=4 --batch=8 --seq_len=256 \
      --out=/tmp/profile.json

jaxift: the trainer's own compiled step (`jaxift.train.state.build`, as `jaxift.tools.benchmark`)
run once under `jax.profiler.trace`; each executed HLO op's self time is read from the trace and
attributed through the op's metadata (`op_name`), which carries the model's named scopes
(`embed`, `attention`, `mlp`, `norm`, `logits`, `loss`) and JAX's transform tags: `transpose(...)`
is the backward pass, the `optimizer` scope (`step.apply_update`: AdamW, clipping) the update,
the rest the forward (with the loss metrics).
PyTorch: one `model(...)`/`backward()`/`opt.step()` under `torch.profiler`; forward ops are
attributed to the module they run in (hooks on the embedding, attention, MLP, norms, LM head),
backward ops to the forward op that created their autograd node (its sequence number).

Both tables are op self times as their profilers see them (wall time of each op, summed); on a
loaded machine compare shares rather than milliseconds.
"""
import collections
import gzip
import json
import pathlib
import re
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from jaxift import fileio
from jaxift import tools
from jaxift.model import sharding
from jaxift.tools import benchmark
from jaxift.tools.shapes import SHAPES
from jaxift.train import host_batches
from jaxift.train import state as state_lib

PHASES = ("forward", "backward", "optimizer")
PARTS = ("embed", "attention", "mlp", "norm", "logits", "loss", "other")
# Named scopes of the model (decoder.py, layers.py, loss.py); the innermost one names the part.
_SCOPES = ("embed", "attention", "mlp", "norm", "logits", "loss")
_OP_NAME = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*?op_name=\"([^\"]*)\"", re.M)


def classify_jax_op(op_name: str) -> tuple[str, str]:
  """(phase, part) of an HLO op from its `op_name` metadata, e.g.
  'jit(train_step)/transpose(jvp(attention))/dot_general' -> ('backward', 'attention')."""
  if re.search(r"(?<![\w])optimizer(?![\w])", op_name):  # step.apply_update's scope
    return "optimizer", "other"
  # Forward ops that no gradient flows through (the attention mask, rotary tables) carry no
  # jvp(...) tag: everything that is not the transpose is the forward.
  phase = "backward" if "transpose(" in op_name else "forward"
  part = "other"
  best = -1
  for scope in _SCOPES:  # the innermost (rightmost) scope wins: 'logits' inside 'loss' is logits
    for m in re.finditer(rf"(?<![\w]){scope}(?![\w])", op_name):
      if m.start() > best:
        best, part = m.start(), scope
  return phase, part


def hlo_op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its `op_name` metadata, from a compiled module's text."""
  return {m.group(1): m.group(2) for m in _OP_NAME.finditer(hlo_text)}


def self_times_us(events: list[dict]) -> dict[str, float]:
  """Self time (microseconds) per event name over complete ('X') trace events: an event's
  duration minus that of the events nested in it on the same thread (a while loop's thunk holds
  its body's thunks)."""
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      by_thread[(e.get("pid"), e.get("tid"))].append(e)
  totals = collections.Counter()
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: list[list] = []  # [end, name, child time]
    def pop():
      end, name, dur, child = stack.pop()
      totals[name] += dur - child
    for e in evs:
      while stack and e["ts"] >= stack[-1][0]:
        pop()
      if stack:
        stack[-1][3] += e["dur"]
      stack.append([e["ts"] + e["dur"], e["name"], e["dur"], 0.0])
    while stack:
      pop()
  return dict(totals)


def table_from_ops(op_ms: dict[tuple[str, str], float]) -> dict[str, dict[str, float]]:
  """{phase: {part: ms}} with every phase and part present (zeros where nothing ran)."""
  out = {phase: {part: 0.0 for part in PARTS} for phase in PHASES}
  for (phase, part), ms in op_ms.items():
    out[phase][part] += ms
  return {phase: {part: round(ms, 1) for part, ms in parts.items()} for phase, parts in out.items()}


def profile_jaxift(hf: dict, rows: dict, *, warmup: int = 1, **config_kw) -> dict:
  """The trainer's compiled step, traced once after `warmup` steps: per-(phase, part) op times,
  the top ops, and the step's wall and CPU seconds."""
  config = benchmark.make_config(hf, **config_kw)
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  state = state_lib.build(config, mesh, int(config.train.num_steps))
  batch = host_batches.to_global(rows, state.batch_sharding)
  step = state.device_step(0)
  compiled = state.train_step.lower(state.params, state.opt_state, state.rest, step,
                                    batch).compile()
  names = hlo_op_names(compiled.as_text())
  params, opt_state = state.params, state.opt_state
  for _ in range(warmup):
    params, opt_state, metrics = compiled(params, opt_state, state.rest, step, batch)
    float(metrics["loss"])
  with tempfile.TemporaryDirectory() as trace_dir:
    t0, c0 = time.perf_counter(), time.process_time()
    with jax.profiler.trace(trace_dir):
      params, opt_state, metrics = compiled(params, opt_state, state.rest, step, batch)
      float(metrics["loss"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    trace_file = sorted(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))[-1]
    with gzip.open(trace_file) as f:
      events = json.load(f)["traceEvents"]
  times = self_times_us([e for e in events if e.get("name") in names])
  op_ms = collections.Counter()
  for name, us in times.items():
    op_ms[classify_jax_op(names[name])] += us / 1e3
  top = sorted(times.items(), key=lambda kv: -kv[1])[:15]
  return {"table_ms": table_from_ops(op_ms), "ops_total_ms": round(sum(times.values()) / 1e3, 1),
          "step_wall_s": round(wall, 3), "step_cpu_s": round(cpu, 3),
          "top_ops": [{"op": n, "ms": round(us / 1e3, 1), "op_name": names[n],
                       "class": "/".join(classify_jax_op(names[n]))} for n, us in top]}


def _torch_part(module) -> str | None:
  """The profile part of a transformers Llama-family module (None: not a leaf part)."""
  kind = type(module).__name__
  if kind == "Embedding":
    return "embed"
  if kind.endswith("Attention"):
    return "attention"
  if kind.endswith("MLP"):
    return "mlp"
  if kind.endswith("RMSNorm") or kind == "LayerNorm":
    return "norm"
  return None


def profile_torch(hf: dict, rows: dict, *, warmup: int = 1) -> dict:
  """One PyTorch + transformers step (as `benchmark.bench_torch`) under torch.profiler."""
  # torch is the comparison, not a dependency of jaxift (it comes with the [test] extra).
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
      transformers.AutoConfig.for_model(**hf), dtype=torch.float32,
      attn_implementation="sdpa").train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  t = {k: torch.as_tensor(v) for k, v in rows.items()}
  ids, targets, weights = t["inputs"].long(), t["targets"].long(), t["weights"]
  mask, positions = (t["segment_ids"] > 0).long(), t["positions"].long()
  rf = torch.profiler.record_function

  def tag(part):
    def pre(_module, _args):
      ctx = rf(f"part::{part}")
      ctx.__enter__()
      scopes.append(ctx)
    def post(_module, _args, _out):
      scopes.pop().__exit__(None, None, None)
    return pre, post

  scopes: list = []
  for module in model.modules():
    part = _torch_part(module)
    if part is not None:
      pre, post = tag(part)
      module.register_forward_pre_hook(pre)
      module.register_forward_hook(post)

  def one_step():
    opt.zero_grad(set_to_none=True)
    with rf("phase::forward"):
      hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions)[0]
      with rf("part::logits"):
        logits = model.lm_head(hidden)
      with rf("part::loss"):
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                               reduction="none")
        loss = (ce * weights.flatten()).sum() / weights.sum().clamp_min(1.0)
    with rf("phase::backward"):
      loss.backward()
    with rf("phase::optimizer"):
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
    return loss.item()

  for _ in range(warmup):
    one_step()
  t0, c0 = time.perf_counter(), time.process_time()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    one_step()
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  events = list(prof.events())

  def ancestors(e):
    while e is not None:
      yield e
      e = e.cpu_parent

  def label(e, prefix):
    return next((a.name[len(prefix):] for a in ancestors(e) if a.name.startswith(prefix)), None)

  # Forward ops' sequence numbers -> part, so that backward nodes inherit their op's part.
  seq_part = {}
  for e in events:
    if label(e, "phase::") == "forward" and getattr(e, "sequence_nr", -1) >= 0:
      seq_part.setdefault(e.sequence_nr, label(e, "part::") or "other")
  op_ms = collections.Counter()
  by_op = collections.Counter()
  for e in events:
    if e.name.startswith(("phase::", "part::")):
      continue
    phase = label(e, "phase::")
    if phase is None:
      continue
    if phase == "backward":
      node = next((a for a in ancestors(e) if a.name.startswith("autograd::engine::evaluate")),
                  None)
      part = seq_part.get(getattr(node, "sequence_nr", -1), "other") if node else "other"
    elif phase == "forward":
      part = label(e, "part::") or "other"
    else:
      part = "other"
    op_ms[(phase, part)] += e.self_cpu_time_total / 1e3
    by_op[e.name] += e.self_cpu_time_total / 1e3
  return {"table_ms": table_from_ops(op_ms), "ops_total_ms": round(sum(by_op.values()), 1),
          "step_wall_s": round(wall, 3), "step_cpu_s": round(cpu, 3),
          "top_ops": [{"op": n, "ms": round(ms, 1)} for n, ms in by_op.most_common(15)],
          "threads": torch.get_num_threads()}


def markdown(result: dict) -> str:
  """The side-by-side table: ms and share of the step per (phase, part), jaxift | PyTorch."""
  sides = [s for s in ("jaxift", "torch") if s in result]
  totals = {s: max(sum(sum(p.values()) for p in result[s]["table_ms"].values()), 1e-9)
            for s in sides}
  head = "| phase | part | " + " | ".join(f"{s} ms | {s} %" for s in sides) + " |"
  lines = [head, "|" + "---|" * (2 + 2 * len(sides))]
  for phase in PHASES:
    for part in PARTS:
      values = [result[s]["table_ms"][phase][part] for s in sides]
      if not any(values):
        continue
      cells = " | ".join(f"{v:.0f} | {100 * v / totals[s]:.1f}" for s, v in zip(sides, values))
      lines.append(f"| {phase} | {part} | {cells} |")
    sums = [sum(result[s]["table_ms"][phase].values()) for s in sides]
    cells = " | ".join(f"**{v:.0f}** | **{100 * v / totals[s]:.1f}**" for s, v in zip(sides, sums))
    lines.append(f"| **{phase}** | all | {cells} |")
  lines.append("| step | wall s / CPU s | " + " | ".join(
      f"{result[s]['step_wall_s']} | {result[s]['step_cpu_s']}" for s in sides) + " |")
  return "\n".join(lines)


def define_flags() -> None:
  flags.DEFINE_enum("shape", "smollm2-135m", sorted(SHAPES), "Architecture (random weights).")
  flags.DEFINE_integer("layers", 0, "Override the number of layers (0: the shape's).")
  flags.DEFINE_integer("seq_len", 256, "Row length.")
  flags.DEFINE_integer("batch", 8, "Rows per step.")
  flags.DEFINE_bool("packing", True, "Packed rows (else one padded example per row).")
  flags.DEFINE_bool("scan_layers", True, "lax.scan over layers.")
  flags.DEFINE_bool("torch", True, "Also profile PyTorch + transformers.")
  flags.DEFINE_string("out", "", "Also write the JSON here (atomically).")


def main(argv) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  hf = dict(SHAPES[f.shape])
  if f.layers:
    hf["num_hidden_layers"] = f.layers
  rows = benchmark.make_rows(f.batch, f.seq_len, hf["vocab_size"], f.packing)
  result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "versions": benchmark.versions(),
            "args": dict(shape=f.shape, layers=hf["num_hidden_layers"], batch=f.batch,
                         seq_len=f.seq_len, packing=f.packing, scan_layers=f.scan_layers)}
  result["jaxift"] = profile_jaxift(hf, rows, batch=f.batch, seq_len=f.seq_len,
                                    scan_layers=f.scan_layers)
  if f.torch:
    result["torch"] = profile_torch(hf, rows)
  result["markdown"] = markdown(result)
  if f.out:
    fileio.write_text(f.out, json.dumps(result, indent=1) + "\n")
  for side in ("jaxift", "torch"):
    if side in result:
      print(f"{side}: top ops (self ms)")
      for op in result[side]["top_ops"]:
        print(f"  {op['ms']:9.1f}  {op['op']}  {op.get('class', '')}  {op.get('op_name', '')}")
  print(result["markdown"])
  return result


if __name__ == "__main__":
  define_flags()
  tools.run(main)
