"""Gemma 3 270M (the real Q4_K_M GGUF from PyPI) read by jaxift vs transformers reading the same
file (`gguf_file=`), float32: prompts of 100-300 tokens padded and packed, and one prompt longer
than the 512-token sliding window, where the window is what is tested."""
import dataclasses
import time

import numpy as np
import pytest
from flax import nnx

from jaxift.model.decoder import Decoder
from jaxift.model.loading import load_model
from tests.model.conftest import jax_logits

TOL = 1e-3
_SENTENCES = [
    "Instruction fine-tuning teaches a pretrained language model to follow requests.",
    "The river flows past the old mill, where children feed the ducks every Sunday morning.",
    "In 1969 two astronauts walked on the Moon while a third orbited above them.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A good recipe lists its ingredients first and then each step in order.",
    "The committee met on Tuesday, argued for three hours, and decided nothing at all.",
    "Prime numbers such as 2, 3, 5, 7, 11 and 13 have exactly two divisors.",
]


def _prompt(tokenizer, seed: int, min_tokens: int) -> list[int]:
  rng = np.random.default_rng(seed)
  text = ""
  while True:
    text += " " + _SENTENCES[rng.integers(len(_SENTENCES))]
    ids = tokenizer(text)["input_ids"]
    if len(ids) >= min_tokens:
      return ids


def _torch_logits(model, ids):
  import torch
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


def _diff(a, b) -> float:
  return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def gemma3_jax(gemma3_gguf):
  start = time.perf_counter()
  model, cfg = load_model(gemma3_gguf, scan_layers=True)
  print(f"gemma3 270M load: {time.perf_counter() - start:.1f} s")
  return model, cfg


def test_gemma3_270m_gguf_matches_transformers(gemma3_jax, gemma3_reference):
  reference, tokenizer = gemma3_reference
  model, cfg = gemma3_jax
  assert (cfg.model_type, cfg.num_hidden_layers, cfg.sliding_window) == ("gemma3_text", 18, 512)
  assert cfg.layer_types.count("full_attention") == 3 and cfg.tie_word_embeddings

  # one padded batch: 2 prompts of ~150 and ~280 tokens, right- and left-padded
  rows = [_prompt(tokenizer, 1, 150), _prompt(tokenizer, 2, 280)]
  refs = [_torch_logits(reference, ids) for ids in rows]
  t = max(map(len, rows))
  tokens, positions, segments = (np.zeros((2, t), np.int32) for _ in range(3))
  starts = [0, t - len(rows[1])]
  for r, (ids, s) in enumerate(zip(rows, starts)):
    tokens[r, s:s + len(ids)], positions[r, s:s + len(ids)], segments[r, s:s + len(ids)] = (
        ids, range(len(ids)), 1)
  logits = jax_logits(model, tokens, positions, segments)
  padded = [_diff(logits[r, s:s + len(ids)], ref)
            for r, (ids, ref, s) in enumerate(zip(rows, refs, starts))]
  assert [int(logits[0, len(rows[0]) - 1].argmax()), int(logits[1, -1].argmax())] == [
      int(ref[-1].argmax()) for ref in refs]  # greedy next tokens agree
  del logits

  # one packed row: two prompts of ~100 and ~120 tokens
  pack = [_prompt(tokenizer, 3, 100), _prompt(tokenizer, 4, 120)]
  pack_refs = [_torch_logits(reference, ids) for ids in pack]
  ids = pack[0] + pack[1]
  logits = jax_logits(model, [ids], [list(range(len(pack[0]))) + list(range(len(pack[1])))],
                      [[1] * len(pack[0]) + [2] * len(pack[1])])[0]
  packed = [_diff(logits[:len(pack[0])], pack_refs[0]), _diff(logits[len(pack[0]):], pack_refs[1])]
  del logits
  print(f"gemma3 270M max |logit diff|: padded {padded} packed {packed}")
  assert max(padded + packed) <= TOL


def test_gemma3_270m_past_the_sliding_window(gemma3_jax, gemma3_reference):
  """650 tokens > the 512-token window: parity holds, and dropping the window breaks it."""
  reference, tokenizer = gemma3_reference
  model, cfg = gemma3_jax
  ids = _prompt(tokenizer, 5, 650)
  ref = _torch_logits(reference, ids)
  args = ([ids], [list(range(len(ids)))], [[1] * len(ids)])
  logits = jax_logits(model, *args)[0]
  diff = _diff(logits, ref)
  abstract = nnx.eval_shape(lambda: Decoder(dataclasses.replace(cfg, sliding_window=None),
                                            rngs=nnx.Rngs(0), scan_layers=True))
  unwindowed = nnx.merge(nnx.split(abstract)[0], nnx.state(model))
  no_window = jax_logits(unwindowed, *args)[0]
  before, after = _diff(no_window[:512], ref[:512]), _diff(no_window[512:], ref[512:])
  print(f"gemma3 270M {len(ids)} tokens (scan_layers): max |logit diff| {diff:.2e}; without the "
        f"window: first 512 {before:.2e}, after {after:.2e}")
  assert diff <= TOL
  assert before <= TOL and after > 100 * TOL


def test_gemma3_270m_export_round_trip(gemma3_jax, gemma3_gguf, gemma3_reference, tmp_path):
  """f32: jaxift reads back the same tensors (norms within 1 ulp of the -1/+1 trip) and logits;
  transformers reads the export with the gap it shows on the original file. q8_0: greedy tokens
  identical on 4 prompts, logit error reported."""
  import torch
  import transformers
  from jaxift.model.gguf_export import export_gguf
  reference, tokenizer = gemma3_reference
  model, cfg = gemma3_jax
  info = export_gguf(model, cfg, tmp_path / "g.f32.gguf", type="f32", tokenizer=gemma3_gguf)
  again, cfg2 = load_model(tmp_path / "g.f32.gguf", scan_layers=True)
  assert cfg2 == cfg
  ours = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for k, v in nnx.to_flat_state(nnx.state(again, nnx.Param)):
    np.testing.assert_array_max_ulp(np.asarray(v[...]), np.asarray(ours[k][...]),
                                    maxulp=1 if "norm" in str(k) else 0)
  ids = _prompt(tokenizer, 6, 120)
  args = ([ids], [list(range(len(ids)))], [[1] * len(ids)])
  source_logits = jax_logits(model, *args)[0]
  self_diff = _diff(jax_logits(again, *args)[0], source_logits)
  del again
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="g.f32.gguf", dtype=torch.float32).eval()
  gap_export = _diff(_torch_logits(theirs, ids), source_logits)
  del theirs
  gap_original = _diff(_torch_logits(reference, ids), source_logits)
  print(f"gemma3 270M f32 export: {info['bytes'] / 2**20:.0f} MiB in {info['seconds']:.1f} s; "
        f"jaxift re-read {self_diff:.1e}; transformers vs jaxift: export {gap_export:.1e}, "
        f"original {gap_original:.1e}")
  assert self_diff <= 1e-4 and gap_export <= TOL

  info = export_gguf(model, cfg, tmp_path / "g.q8_0.gguf", type="q8_0", tokenizer=gemma3_gguf)
  q8, _ = load_model(tmp_path / "g.q8_0.gguf", scan_layers=True)
  rows = [tokenizer(p)["input_ids"] for p in ("The capital of France is",
                                             "def fibonacci(n):\n    return",
                                             "Water boils at a temperature of",
                                             "The largest planet in the solar system is")]
  t = max(map(len, rows))
  tokens, positions, segments = (np.zeros((len(rows), t), np.int32) for _ in range(3))
  for r, row in enumerate(rows):
    tokens[r, :len(row)], positions[r, :len(row)], segments[r, :len(row)] = row, range(len(row)), 1
  a, b = jax_logits(model, tokens, positions, segments), jax_logits(q8, tokens, positions, segments)
  q8_diff = max(_diff(a[r, :len(row)], b[r, :len(row)]) for r, row in enumerate(rows))
  greedy = [(int(a[r, len(row) - 1].argmax()), int(b[r, len(row) - 1].argmax()))
            for r, row in enumerate(rows)]
  print(f"gemma3 270M q8_0 export: {info['bytes'] / 2**20:.0f} MiB in {info['seconds']:.1f} s, "
        f"max |logit diff| vs source {q8_diff:.3f}, next tokens {greedy}")
  assert all(x == y for x, y in greedy)
