"""python -m jaxift.tools.export_gguf on a trained run: the file jaxift reads back gives the run's
logits exactly (f32), and carries the tokenizer and the training template as its chat template."""
import subprocess
import sys

import gguf
import jax.numpy as jnp
import numpy as np

from jaxift import workdir as workdir_lib
from jaxift.model import gguf_export
from jaxift.model.loading import load_model
from tests.train.conftest import REPO_ROOT, subprocess_env


def test_export_gguf_of_a_run_reads_back_exactly(reference_run, tmp_path):
  workdir, _ = reference_run
  out = tmp_path / "run-f32.gguf"
  proc = subprocess.run([sys.executable, "-m", "jaxift.tools.export_gguf", f"--workdir={workdir}",
                         "--step=latest", f"--out={out}", "--type=f32"], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "encode f32: 100%" in proc.stderr  # the progress bar ran to the last tensor
  trained, tokenizer, _ = workdir_lib.load_for_inference(workdir, "latest")
  reread, _ = load_model(str(out))
  ids = jnp.array([tokenizer.encode("Below is an instruction that describes a task.")])
  pos, seg = jnp.arange(ids.shape[1])[None], jnp.ones_like(ids)
  np.testing.assert_array_equal(np.asarray(reread(ids, pos, seg)), np.asarray(trained(ids, pos, seg)))
  fields = gguf.GGUFReader(str(out)).fields
  assert fields["tokenizer.chat_template"].contents() == gguf_export.CHAT_TEMPLATES["alpaca"]
  assert len(fields["tokenizer.ggml.tokens"].contents()) == len(tokenizer)
