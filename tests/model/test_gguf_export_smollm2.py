"""GGUF export of the real SmolLM2-135M-Instruct (loaded from its Q4_1 GGUF): f32 read back by
jaxift (bit-equal tensors, equal logits) and by transformers (the float-order gap it shows on the
original file too), q8_0 with greedy tokens identical on 4 prompts; tokenizer and chat template
carried over."""
import numpy as np
import pytest
from flax import nnx

import gguf
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model.gguf_export import export_gguf
from jaxift.model.loading import load_model
from tests.model.conftest import jax_logits
from tests.model.test_smollm2 import PROMPTS

STEPS = 8


def _batch(rows, length):
  tokens, positions, segments = (np.zeros((len(rows), length), np.int32) for _ in range(3))
  for r, ids in enumerate(rows):
    tokens[r, :len(ids)], positions[r, :len(ids)], segments[r, :len(ids)] = ids, range(len(ids)), 1
  return tokens, positions, segments


def _greedy(model, rows) -> list[list[int]]:
  """STEPS greedy tokens per prompt (full forwards on one fixed shape, right-padded)."""
  import jax
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
  rows = [list(r) for r in rows]
  length = max(map(len, rows)) + STEPS
  for _ in range(STEPS):
    logits = np.asarray(forward(state, *_batch(rows, length)))
    for r, ids in enumerate(rows):
      ids.append(int(logits[r, len(ids) - 1].argmax()))
  return [ids[-STEPS:] for ids in rows]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, smollm2_tokenizer):
  model, cfg = load_model(smollm2_gguf)
  rows = [smollm2_tokenizer(p)["input_ids"] for p in PROMPTS]
  return model, cfg, rows


def test_f32_export_round_trip(smollm2, smollm2_gguf, tmp_path):
  import torch
  import transformers
  model, cfg, rows = smollm2
  info = export_gguf(model, cfg, tmp_path / "smollm2.f32.gguf", type="f32", tokenizer=smollm2_gguf)
  print(f"SmolLM2 f32 export: {info['bytes'] / 2**20:.0f} MiB in {info['seconds']:.1f} s")
  again, cfg2 = load_model(tmp_path / "smollm2.f32.gguf")
  assert cfg2 == cfg
  ours = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for k, v in nnx.to_flat_state(nnx.state(again, nnx.Param)):
    np.testing.assert_array_equal(np.asarray(v[...]), np.asarray(ours[k][...]), err_msg=str(k))
  batch = _batch(rows, max(map(len, rows)))
  a, b = jax_logits(model, *batch), jax_logits(again, *batch)
  assert np.abs(a - b).max() <= 1e-4
  # tokenizer and chat template come along: same ids, same template
  src = gguf.GGUFReader(str(smollm2_gguf)).fields
  out = gguf.GGUFReader(str(tmp_path / "smollm2.f32.gguf")).fields
  assert out["tokenizer.chat_template"].contents() == src["tokenizer.chat_template"].contents()
  exported_tokenizer = load_tokenizer(str(tmp_path / "smollm2.f32.gguf"))
  assert [exported_tokenizer(p)["input_ids"] for p in PROMPTS] == rows
  # transformers reading the export vs jaxift: the same gap as on the original file
  gaps = {}
  for path in (smollm2_gguf, tmp_path / "smollm2.f32.gguf"):
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
      gaps[path.name] = max(
          float(np.abs(theirs(torch.tensor([ids])).logits[0].numpy() - a[r, :len(ids)]).max())
          for r, ids in enumerate(rows))
    del theirs
  print(f"SmolLM2 transformers vs jaxift max |logit diff|: {gaps}")
  assert max(gaps.values()) <= 1e-3


# PROMPTS[1] ("def fibonacci(n):\n    ") is left out: its top two next tokens are 0.04 apart in
# the source model, within q8_0's rounding (mean |logit diff| 0.14), so its greedy token flips.
GREEDY_PROMPTS = [PROMPTS[0], PROMPTS[2], PROMPTS[3], "Water boils at a temperature of"]


def test_q8_0_export_greedy_tokens(smollm2, smollm2_gguf, smollm2_tokenizer, tmp_path):
  model, cfg, _ = smollm2
  rows = [smollm2_tokenizer(p)["input_ids"] for p in GREEDY_PROMPTS]
  info = export_gguf(model, cfg, tmp_path / "smollm2.q8_0.gguf", type="q8_0",
                     tokenizer=smollm2_gguf)
  print(f"SmolLM2 q8_0 export: {info['bytes'] / 2**20:.0f} MiB in {info['seconds']:.1f} s, "
        f"{info['tensor_types']}")
  again, _ = load_model(tmp_path / "smollm2.q8_0.gguf")
  batch = _batch(rows, max(map(len, rows)))
  diff = max(float(np.abs(jax_logits(model, *batch)[r, :len(ids)]
                          - jax_logits(again, *batch)[r, :len(ids)]).max())
             for r, ids in enumerate(rows))
  greedy_src, greedy_q8 = _greedy(model, rows), _greedy(again, rows)
  print(f"SmolLM2 q8_0 vs source: max |logit diff| {diff:.3f}; greedy {greedy_q8 == greedy_src}")
  assert greedy_q8 == greedy_src
