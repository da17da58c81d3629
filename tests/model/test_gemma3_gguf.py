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
