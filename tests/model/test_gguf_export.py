"""GGUF export (`gguf_export.export_gguf`) and GGUF import for every family and quantization type:
tiny transformers models exported and read back (by jaxift; and by transformers where it reads the
architecture), LoRA merged on export, every type gguf-py dequantizes, truncated files."""
import numpy as np
import pytest
from flax import nnx
from gguf.quants import dequantize, quantize

import gguf
from jaxift.model import gguf as gguf_lib
from jaxift.model import lora
from jaxift.model.gguf_export import EXPORT_TYPES, export_gguf
from jaxift.model.loading import load_model
from tests.lora.conftest import lora_config, randomize_adapters
from tests.model.conftest import jax_logits, random_examples, torch_logits

TOL = 1e-4
FAMILIES = ["llama_bias_tied", "llama3_rope_untied", "mistral_window", "qwen2_tied", "qwen3",
            "gemma3_text", "gemma3_defaults", "phi3_longrope"]


def _row(ex):
  n = len(ex)
  return np.array([ex]), np.arange(n)[None], np.ones((1, n), np.int32)


def _params(model) -> dict:
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("case", FAMILIES)
def test_f32_export_reads_back_bit_equal(case, tiny_checkpoint, tmp_path):
  directory, torch_model = tiny_checkpoint(case)
  model, cfg = load_model(directory)
  info = export_gguf(model, cfg, tmp_path / "m.gguf", type="f32")
  assert info["tensor_types"].keys() == {"F32"} and not list(tmp_path.glob(".m.gguf.tmp*"))
  if case == "llama3_rope_untied":  # written with llama.cpp's rope_freqs; jaxift reads HF dirs
    with pytest.raises(ValueError, match="m.gguf: GGUF with rope_freqs"):
      load_model(tmp_path / "m.gguf")
    return
  again, cfg2 = load_model(tmp_path / "m.gguf", scan_layers=True)
  assert cfg2.model_type == cfg.model_type and cfg2.layer_types == cfg.layer_types
  ours, back = _params(model), _params(load_model(tmp_path / "m.gguf")[0])
  assert ours.keys() == back.keys()
  for k in ours:  # frozen tensors come back bit-equal (gemma's norm +1/-1 is exact in float32 here)
    np.testing.assert_allclose(back[k], ours[k], rtol=0, atol=1e-7 if "norm" in str(k) else 0)
  ex = random_examples(12, (20,))[0]
  diff = np.abs(jax_logits(again, *_row(ex))[0] - torch_logits(torch_model, ex)).max()
  assert diff <= TOL, diff


# (transformers' GGUF reader drops llama biases, qwen3's head_dim, phi3's rope factors and
# mistral's window, so those families are checked by jaxift's reader above and llama.cpp's rules)
@pytest.mark.parametrize("case", ["qwen2_tied", "gemma3_defaults"])
def test_transformers_reads_the_export(case, tiny_checkpoint, tmp_path):
  import torch
  import transformers
  directory, torch_model = tiny_checkpoint(case)
  model, cfg = load_model(directory)
  export_gguf(model, cfg, tmp_path / "m.gguf", type="f32")
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="m.gguf", dtype=torch.float32).eval()
  ex = random_examples(13, (10,))[0]
  np.testing.assert_allclose(torch_logits(theirs, ex), torch_logits(torch_model, ex), atol=TOL)


@pytest.mark.parametrize("type_name", sorted(set(EXPORT_TYPES) - {"f32"}))
def test_each_export_type_reads_back_as_quantized(type_name, tiny_checkpoint, tmp_path):
  """Each weight comes back as exactly dequantize(quantize(w)); logit error is reported."""
  directory, torch_model = tiny_checkpoint("qwen3")
  model, cfg = load_model(directory)
  info = export_gguf(model, cfg, tmp_path / "m.gguf", type=type_name)
  again, _ = load_model(tmp_path / "m.gguf")
  source = gguf_lib.open_gguf(tmp_path / "m.gguf")[1]
  qtype = EXPORT_TYPES[type_name]
  name = "model.layers.1.mlp.down_proj.weight"  # [32, 48]: 48 % 32 != 0 for the 32-blocks
  up = "model.layers.1.mlp.up_proj.weight"  # [48, 32]: quantized
  assert source.tensor_type(up) == qtype.name
  w = torch_model.state_dict()[up].numpy()
  np.testing.assert_array_equal(source.get(up), dequantize(quantize(w, qtype), qtype)
                                if qtype != gguf.GGMLQuantizationType.F16
                                else w.astype(np.float16).astype(np.float32))
  assert source.tensor_type(name) in (qtype.name, "F16")
  ex = random_examples(14, (12,))[0]
  diff = np.abs(jax_logits(again, *_row(ex))[0] - torch_logits(torch_model, ex)).max()
  print(f"qwen3 tiny {type_name}: {info['tensor_types']}, max |logit diff| {diff:.2e}")
  assert diff < 0.5


def test_lora_model_is_merged_on_export(tiny_checkpoint, tmp_path):
  directory, _ = tiny_checkpoint("gemma3_text")
  model, cfg = load_model(directory)
  lora.apply_lora(model, lora_config(), seed=3)
  randomize_adapters(model, seed=4)
  export_gguf(model, cfg, tmp_path / "m.gguf", type="f32")
  merged, _ = load_model(tmp_path / "m.gguf")
  ex = random_examples(15, (10,))[0]
  a, b = jax_logits(model, *_row(ex))[0], jax_logits(merged, *_row(ex))[0]
  base = jax_logits(load_model(directory)[0], *_row(ex))[0]
  assert np.abs(a - base).max() > 1e-3  # the adapters matter
  np.testing.assert_allclose(b, a, atol=TOL)


# every type gguf-py dequantizes, read through jaxift's tensor path
_DEQUANTIZABLE = sorted(t.name for t in gguf.quants._type_traits)  # pylint: disable=protected-access


@pytest.mark.parametrize("type_name", _DEQUANTIZABLE + ["F32", "F16"])
def test_every_dequantizable_type_is_read(type_name, tmp_path):
  """Random blocks (bytes < 0x3c keep every embedded f16 scale finite) for each type, in a tensor
  of 2 rows of 256: jaxift's reader returns gguf's dequantization in HF shape."""
  qtype = gguf.GGMLQuantizationType[type_name]
  block, type_size = gguf.GGML_QUANT_SIZES[qtype]
  rng = np.random.default_rng(0)
  if type_name in ("F32", "F16"):
    raw = rng.standard_normal((2, 256)).astype(np.float32 if type_name == "F32" else np.float16)
  else:
    raw = rng.integers(0, 0x3c, (2, 256 // block * type_size), dtype=np.uint8)
  writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
  writer.add_tensor("token_embd.weight", raw, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  tensor = gguf_lib.open_reader(tmp_path / "t.gguf").tensors[0]
  got = gguf_lib.dequantized(tensor)
  assert got.shape == (2, 256) and got.dtype == np.float32
  np.testing.assert_array_equal(got, np.asarray(dequantize(raw, qtype), np.float32))
  assert np.isfinite(got).all()


def test_truncated_gguf_names_file_and_expectation(tiny_checkpoint, tmp_path):
  directory, _ = tiny_checkpoint("qwen2_tied")
  model, cfg = load_model(directory)
  export_gguf(model, cfg, tmp_path / "m.gguf", type="f32")
  data = (tmp_path / "m.gguf").read_bytes()
  (tmp_path / "cut.gguf").write_bytes(data[:len(data) - 1000])
  with pytest.raises(ValueError, match=r"cut.gguf: truncated GGUF: tensor '.*' \(F32, \d+ bytes\) "
                                       rf"should end at byte \d+, but the file has {len(data) - 1000} "
                                       r"bytes"):
    load_model(tmp_path / "cut.gguf")
  (tmp_path / "head.gguf").write_bytes(data[:100])
  with pytest.raises(ValueError, match=r"head.gguf: not a readable GGUF file \(100 bytes"):
    load_model(tmp_path / "head.gguf")
  with pytest.raises(ValueError, match="type 'q4_k' is not supported.*f32, f16, bf16, q8_0"):
    export_gguf(model, cfg, tmp_path / "x.gguf", type="q4_k")


@pytest.mark.parametrize("name", ["alpaca", "phi3"])
def test_chat_templates_render_the_training_prompt(name):
  """The Jinja written for jaxift's non-chat formats renders the prompt training used."""
  import jinja2
  from jaxift.data.formats import Conversation, Turn
  from jaxift.data.templates import render
  from jaxift.model.gguf_export import CHAT_TEMPLATES
  for system in ("", "Answer with the result only."):
    turns = ([Turn("system", system, False)] if system else []) + [
        Turn("user", "Add 2 and 3.", False), Turn("assistant", "5", True)]
    conv = Conversation(turns, dict(instruction="Add 2 and 3.", input="", output="5"))
    pieces = render(name, conv)
    first_trained = next(i for i, p in enumerate(pieces) if p.trained)
    prompt = "".join(p.text for p in pieces[:first_trained])
    messages = [dict(role=t.role, content=t.text) for t in turns[:-1]]
    rendered = jinja2.Environment().from_string(CHAT_TEMPLATES[name]).render(
        messages=messages, add_generation_prompt=True)
    assert rendered == prompt, (rendered, prompt)


def test_byte_level_bpe_tokenizer_is_written(gpt2_tokenizer, tmp_path):
  """A transformers tokenizer (GPT-2's) written as tokenizer.ggml: jaxift's torch-free GGUF
  tokenizer reads it back and encodes text to the same ids."""
  from jaxift.data.tokenizers import load_tokenizer
  from jaxift.model.config import default_model_config
  from jaxift.model.loading import build_model
  model_config = default_model_config()
  model_config.hf_config = dict(model_type="qwen2", vocab_size=len(gpt2_tokenizer), hidden_size=32,
                                intermediate_size=48, num_hidden_layers=1,
                                num_attention_heads=4, num_key_value_heads=2)
  model, cfg = build_model(model_config, seed=3)
  export_gguf(model, cfg, tmp_path / "m.gguf", type="f16", tokenizer=gpt2_tokenizer,
              tokenizer_pre="gpt2", chat_template="{{ messages[0]['content'] }}")
  fields = gguf.GGUFReader(str(tmp_path / "m.gguf")).fields
  assert fields["tokenizer.ggml.model"].contents() == "gpt2"
  assert fields["tokenizer.chat_template"].contents() == "{{ messages[0]['content'] }}"
  text = "Hello world, this is jaxift.  It writes GGUF files: 1234 tokens!"
  assert load_tokenizer(str(tmp_path / "m.gguf"))(text)["input_ids"] == gpt2_tokenizer(text)["input_ids"]
