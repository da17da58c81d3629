"""SmolLM2-135M: greedy generation token-identical to transformers, and choice log-likelihoods.

The reference is transformers `generate` (PyTorch CPU, do_sample=False) on the 5 prompts of
different lengths as one left-padded batch with an attention mask; ours left-pads with segment ids.
"""
import numpy as np
import pytest
import torch

from jaxift.data import tokenize
from jaxift.infer import multiple_choice, sampler

INSTRUCTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Translate 'good morning' into Spanish, and explain when people say it.",
    "What is 12 times 12?",
]
MAX_NEW_TOKENS = 24


def _chat_prompt(tokenizer, text: str) -> list[int]:
  rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
  return list(tokenizer.encode(rendered, add_special_tokens=False))


def test_greedy_batch_is_token_identical_to_transformers(smollm2_jax, smollm2_torch,
                                                          smollm2_tokenizer, monkeypatch):
  prompts = [_chat_prompt(smollm2_tokenizer, t) for t in INSTRUCTIONS]
  assert len({len(p) for p in prompts}) > 1, "prompts should differ in length to test padding"
  stop_ids = tokenize.stop_token_ids(smollm2_tokenizer)
  assert smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_ids
  shrinks = []
  take_rows = sampler._take_rows
  monkeypatch.setattr(sampler, "_take_rows", lambda s, rows, filler: (
      shrinks.append(len(rows)), take_rows(s, rows, filler))[1])
  # Checked every 4 steps: rows that stopped leave the batch (see sampler.generate_tokens).
  ours = sampler.generate_tokens(smollm2_jax, prompts, max_new_tokens=MAX_NEW_TOKENS,
                                 stop_token_ids=stop_ids, check_every=4)
  assert shrinks, [len(g) for g in ours]  # three rows stop early: the last two go on alone
  # transformers batched: left padding + attention mask (it derives positions from the mask).
  width = max(len(p) for p in prompts)
  input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
  attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = smollm2_torch.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                 max_new_tokens=MAX_NEW_TOKENS, eos_token_id=stop_ids,
                                 pad_token_id=stop_ids[0])
  for row, got in zip(out, ours):
    expected = row[width:].tolist()
    cut = next((i for i, t in enumerate(expected) if t in stop_ids), len(expected))
    assert got == expected[:cut], (smollm2_tokenizer.decode(got), smollm2_tokenizer.decode(expected))
  assert any(len(g) > 5 for g in ours)


@pytest.mark.parametrize("which", [0, 3])
def test_greedy_single_prompt_is_token_identical_to_transformers(which, smollm2_jax, smollm2_torch,
                                                                 smollm2_tokenizer):
  """Batch 1 decodes differently on the CPU (a stacked KV cache, q/k/v and gate/up products
  fused, see sampler._decode_layout): the shortest and the longest prompt, unpadded."""
  prompt = _chat_prompt(smollm2_tokenizer, INSTRUCTIONS[which])
  stop_ids = tokenize.stop_token_ids(smollm2_tokenizer)
  ours = sampler.generate_tokens(smollm2_jax, [prompt], max_new_tokens=MAX_NEW_TOKENS,
                                 stop_token_ids=stop_ids)[0]
  with torch.no_grad():
    out = smollm2_torch.generate(torch.tensor([prompt]), do_sample=False,
                                 max_new_tokens=MAX_NEW_TOKENS, eos_token_id=stop_ids,
                                 pad_token_id=stop_ids[0])
  expected = out[0, len(prompt):].tolist()
  cut = next((i for i, t in enumerate(expected) if t in stop_ids), len(expected))
  assert ours == expected[:cut] and len(ours) > 5, (smollm2_tokenizer.decode(ours),
                                                    smollm2_tokenizer.decode(expected))


def test_choice_loglikelihoods_match_transformers(smollm2_jax, smollm2_torch, smollm2_tokenizer):
  context = list(smollm2_tokenizer.encode("Question: What color is the sky on a clear day?\nAnswer:",
                                          add_special_tokens=False))
  choices = [" blue", " green", " a shade of purple"]
  pairs = [(context, list(smollm2_tokenizer.encode(c, add_special_tokens=False))) for c in choices]
  ours = multiple_choice.model_loglikelihood_fn(smollm2_jax, batch_size=4)(pairs)
  for (ctx, cont), value in zip(pairs, ours):
    with torch.no_grad():
      logits = smollm2_torch(torch.tensor([ctx + cont])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1).numpy()
    expected = sum(logprobs[len(ctx) - 1 + i, tok] for i, tok in enumerate(cont))
    assert value == pytest.approx(expected, abs=2e-3)
  assert int(np.argmax(ours)) == 0  # the model knows the sky is blue
