"""Issue 12 end to end: a run saved by P processes (gloo on 127.0.0.1) resumes on P' != P with
packing and a 2-component mixture, and every example of the epoch is trained exactly once across
the interruption. Each process logs the global ids of the examples in every batch it trains;
the ids of both runs, counted together, are compared as multisets with an uninterrupted run's."""
import collections
import json
import socket
import subprocess
import sys
import textwrap

import pytest

from jaxift.train import trainer
from tests.train.conftest import REPO_ROOT, subprocess_env

N_A, N_B = 10, 6  # records of the two components: one epoch = 16 examples
STEPS = 6

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {root!r})
    count, index, port, workdir, stop = {count}, {index}, {port}, {workdir!r}, {stop}
    if count > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{{port}}", num_processes=count,
                                 process_id=index)
    import ml_collections
    from jaxift.data import elastic
    from tests.train.conftest import make_tiny_config
    from jaxift.train.trainer import train_and_evaluate

    log = open(f"{{workdir}}.ids.{{count}}.{{index}}.jsonl", "a")
    original = elastic.ElasticIterator.__next__
    def logged(self):
      batch = original(self)
      log.write(json.dumps(self.last_ids.tolist()) + "\\n")
      log.flush()
      return batch
    elastic.ElasticIterator.__next__ = logged

    c = make_tiny_config({gpt2!r}, steps={steps}, batch=4, batching="packing")
    c.data.source = "files"
    c.data.shuffle = True
    c.data.split_fractions = (1.0, 0.0, 0.0)
    c.data.precheck_records = 0
    c.data.packing_bins = 4
    c.data.mixture.a = ml_collections.ConfigDict(dict(train_files={a!r}, weight=2.0))
    c.data.mixture.b = ml_collections.ConfigDict(dict(train_files={b!r}, weight=1.0))
    c.train.stop_at_step = stop
    out = train_and_evaluate(c, workdir)
    print(json.dumps({{"final": {{"step": out["step"], "start_step": out["start_step"]}}}}))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def mixture_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("elastic_mix")
  for name, n in (("a", N_A), ("b", N_B)):
    rows = [{"instruction": f"{name} task {k}", "input": "", "output": f"{name} answer {k}"}
            for k in range(n)]
    (d / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  return d


def _run(gpt2_dir, files, workdir, count, stop=0):
  port = _free_port()
  procs = []
  for index in range(count):
    script = SCRIPT.format(root=str(REPO_ROOT), count=count, index=index, port=port,
                           workdir=str(workdir), stop=stop, gpt2=gpt2_dir, steps=STEPS,
                           a=str(files / "a.jsonl"), b=str(files / "b.jsonl"))
    procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                                  env=subprocess_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return outs


def _trained(workdir) -> collections.Counter:
  ids = collections.Counter()
  for path in workdir.parent.glob(f"{workdir.name}.ids.*.jsonl"):
    for line in path.read_text().splitlines():
      ids.update(json.loads(line))
  return ids


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_process_count_trains_each_example_once(
    gpt2_dir, mixture_files, tmp_path, before, after):
  epoch = N_A + N_B
  straight = tmp_path / "straight"
  _run(gpt2_dir, mixture_files, straight, before)
  want = _trained(straight)
  assert set(range(epoch)) <= set(want), "the uninterrupted run must cover an epoch"

  resumed = tmp_path / "resumed"
  _run(gpt2_dir, mixture_files, resumed, before, stop=2)
  outs = _run(gpt2_dir, mixture_files, resumed, after)
  assert '"start_step": 2' in outs[0][0]
  got = _trained(resumed)
  # Every example of the first epoch exactly once, counting both runs; nothing twice at all.
  assert {g: n for g, n in got.items() if g < epoch} == {g: 1 for g in range(epoch)}
  assert max(got.values()) == 1 and max(want.values()) == 1
  assert ({g for g in got if g < epoch} == {g for g in want if g < epoch})


def test_global_batch_not_divisible_by_the_new_process_count(tiny_config, tmp_path, monkeypatch):
  data_iter = tmp_path / "checkpoints" / "4" / "data_iter"
  data_iter.mkdir(parents=True)
  for i in range(2):
    (data_iter / f"process_{i}-of-2.json").write_text("{}")
  assert trainer._saved_process_count(tmp_path) == 2  # pylint: disable=protected-access
  monkeypatch.setattr(trainer.jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match=(
      r"train.global_batch_size=4 is not divisible by 3 processes \(the checkpoint to resume was "
      r"saved by 2 processes\): set train.global_batch_size to a multiple of 3")):
    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
