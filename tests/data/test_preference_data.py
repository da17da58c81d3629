"""Preference pairs (data.pairs): both record shapes, SFT masking on each side, a pair dropped whole
and counted, row pairs through padding, bucketing and packing, clear errors."""
import json

import numpy as np
import pytest

from jaxift.data import pipeline, preference, synthetic, tokenize
from jaxift.data.config import default_data_config

RECORDS = synthetic.make_examples(24, seed=5)
ALPACA_PAIRS = [{"instruction": r["instruction"], "input": r["input"], "chosen": r["output"],
                 "rejected": RECORDS[(i + 1) % len(RECORDS)]["output"] + " (wrong)"}
                for i, r in enumerate(RECORDS)]


def _write(tmp_path, records, name="pairs.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(json.dumps(r) for r in records))
  return str(path)


def _cfg(path, **kw):
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions = path, (1.0, 0.0, 0.0)
  cfg.max_seq_length, cfg.buckets = 128, (48, 64, 96)
  cfg.prefetch_buffer_size, cfg.shuffle, cfg.pairs = 0, False, True
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _iterator(cfg, tok, batch_size=4):
  return pipeline.make_iterator(cfg, tok, split="train", batch_size=batch_size, shard_index=0,
                                shard_count=1, seed=0, num_epochs=1)


def _sequences(batch, row):
  """(inputs, targets, weights) by segment id of one row."""
  out = {}
  seg = batch["segment_ids"][row]
  for s in range(1, seg.max() + 1):
    idx = np.flatnonzero(seg == s)
    assert batch["positions"][row, idx].tolist() == list(range(len(idx)))
    out[s] = tuple(tuple(batch[k][row, idx].tolist()) for k in ("inputs", "targets", "weights"))
  return out


def _sft(record, cfg, tok):
  ex = tokenize.tokenize_record(record, cfg, tok)
  return tuple(tuple(ex[k].tolist()) for k in ("inputs", "targets", "weights"))


@pytest.mark.parametrize("batching", ["max_length", "bucket", "packing"])
def test_rows_pair_chosen_and_rejected_with_sft_masks(gpt2_tokenizer, tmp_path, batching):
  cfg = _cfg(_write(tmp_path, ALPACA_PAIRS), batching=batching)
  seen = {}
  batches = list(_iterator(cfg, gpt2_tokenizer))
  for batch in batches:
    assert batch["inputs"].shape[0] == 8  # 4 pairs -> 8 rows
    for i in range(4):
      chosen, rejected = _sequences(batch, 2 * i), _sequences(batch, 2 * i + 1)
      assert sorted(chosen) == sorted(rejected)  # the same segment ids: a pair per segment
      for s in chosen:
        seen[chosen[s]] = rejected[s]
  assert len(seen) == len(ALPACA_PAIRS)
  for rec in ALPACA_PAIRS:  # each side is exactly the SFT example of that response
    base = {"instruction": rec["instruction"], "input": rec["input"]}
    want_chosen = _sft({**base, "output": rec["chosen"]}, cfg, gpt2_tokenizer)
    assert seen[want_chosen] == _sft({**base, "output": rec["rejected"]}, cfg, gpt2_tokenizer)
  if batching == "packing":
    assert max(b["segment_ids"].max() for b in batches) > 1  # several pairs share a row pair


def test_chat_shape_uses_the_template_and_masks_only_the_response(gpt2_tokenizer, tmp_path):
  records = [
      {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
       "chosen": [{"role": "assistant", "content": "4"}], "rejected": "5"},
      {"prompt": "Capital of France?", "chosen": {"role": "assistant", "content": "Paris"},
       "rejected": [{"role": "assistant", "content": "Lyon"}]},
      {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
       "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]},
  ]
  cfg = _cfg(_write(tmp_path, records), template="chatml")
  batch = next(_iterator(cfg, gpt2_tokenizer, batch_size=3))
  trained = [gpt2_tokenizer.decode(batch["targets"][r][batch["weights"][r] > 0]) for r in range(6)]
  # GPT-2 has no single <|im_end|> token: the turn ends with EOS (the SFT rule)
  assert trained == [t + "<|endoftext|>" for t in ("4", "5", "Paris", "Lyon", "Hello", "Go.")]
  chosen, _ = preference.split_pair(records[0])
  assert chosen["messages"][-1] == {"role": "assistant", "content": "4"}
  assert _sequences(batch, 0)[1] == _sft(chosen, cfg, gpt2_tokenizer)


@pytest.mark.parametrize("overlong,reason", [("drop", "too_long"),
                                             ("truncate_prompt", "too_long_response")])
def test_a_pair_is_dropped_whole_and_counted(gpt2_tokenizer, tmp_path, overlong, reason):
  records = list(ALPACA_PAIRS[:8])
  records[3] = {**records[3], "rejected": "word " * 200}  # only the rejected side is too long
  cfg = _cfg(_write(tmp_path, records), overlong=overlong)
  it = _iterator(cfg, gpt2_tokenizer)
  batches = list(it)
  assert it.stats.as_dict() == {"kept": 7, f"dropped/{reason}": 1}
  kept = sum(int((b["weights"][0::2].sum(axis=1) > 0).sum()) for b in batches)
  assert kept == 7
  for b in batches:  # fill rows come in pairs too: both sides empty
    empty = b["weights"].sum(axis=1) == 0
    assert (empty[0::2] == empty[1::2]).all()


def test_missing_chosen_is_an_error_naming_file_and_line(gpt2_tokenizer, tmp_path):
  records = list(ALPACA_PAIRS[:4])
  records[2] = {"instruction": "x", "input": "", "output": "y", "chosen": "y"}
  path = _write(tmp_path, records)
  with pytest.raises(ValueError, match=r"pairs.jsonl:3: a preference record needs \['rejected'\]"):
    list(_iterator(_cfg(path), gpt2_tokenizer))


def test_sft_batches_unchanged_by_the_hook(gpt2_tokenizer, tmp_path):
  path = _write(tmp_path, RECORDS, "sft.jsonl")
  cfg = _cfg(path, batching="packing")
  cfg.pairs = False
  batch = next(_iterator(cfg, gpt2_tokenizer))
  assert batch["inputs"].shape == (4, 128)


@pytest.mark.parametrize("batching", ["bucket", "packing"])
def test_epoch_plan_counts_pairs(gpt2_tokenizer, tmp_path, batching):
  from jaxift.data import steps
  cfg = _cfg(_write(tmp_path, ALPACA_PAIRS), batching=batching)
  plan = steps.plan_steps(cfg, gpt2_tokenizer, batch_size=4, shard_count=1, num_epochs=1)
  if batching == "bucket":
    assert plan.steps == 6  # 24 pairs / 4 pairs per batch
  else:  # several pairs per row pair: fewer steps than pairs / batch
    assert 1 <= plan.steps < 6
