"""jaxift.tools.preprocess (ArrayRecord, data_params.json, atomic output) and jaxift.tools.inspect_batch."""
import json
import pathlib

import numpy as np
import pytest

from jaxift.data import formats, pipeline, synthetic
from jaxift.data.config import default_data_config

from jaxift.tools import inspect_batch
from jaxift.tools import preprocess

RECORDS = synthetic.make_examples(20, seed=9) + [
    {'instruction': 'x', 'input': '', 'output': ''},  # empty response: dropped, counted
    {'instruction': 'word ' * 300, 'input': '', 'output': 'y'}]  # too long: dropped, counted


@pytest.fixture(scope='module')
def input_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp('raw')
  (folder / 'part1.jsonl').write_text('\n'.join(json.dumps(r) for r in RECORDS[:12]))
  (folder / 'part2.json').write_text(json.dumps(RECORDS[12:]))
  return folder


def _batches(cfg, tok):
  return list(pipeline.make_iterator(cfg, tok, split='train', batch_size=4, shard_index=0,
                                     shard_count=1, seed=0, num_epochs=1))


def _cfg(files, **kw):
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions, cfg.shuffle = files, (1.0, 0.0, 0.0), False
  cfg.max_seq_length = 128
  cfg.update(kw)
  return cfg


def test_preprocess_writes_what_the_pipeline_would_make(input_dir, tmp_path, shared_data,
                                                        gpt2_tokenizer):
  out = tmp_path / 'out'
  params = preprocess.preprocess(preprocess.parse_args([
      f'--input_dir={input_dir}', f'--encoder_file={shared_data}/gpt2/encoder.json',
      f'--vocab_file={shared_data}/gpt2/vocab.bpe', '--max_seq_length=128',
      f'--output_dir={out}']))
  written = json.loads((out / 'data_params.json').read_text())
  assert written['examples_read'] == 22 and written['examples_written'] == 20
  assert written['dropped'] == {'empty_response': 1, 'too_long': 1}
  online = _batches(_cfg([str(input_dir / 'part1.jsonl'), str(input_dir / 'part2.json')]),
                    gpt2_tokenizer)
  offline = _batches(_cfg(str(out / '*.arrayrecord')), gpt2_tokenizer)
  assert len(online) == len(offline) == 5
  for a, b in zip(online, offline):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  real = sum(int((b['segment_ids'] > 0).sum()) for b in online)
  assert written['total_tokens'] == written['non_padding_tokens'] == real
  assert written['trainable_tokens'] == int(sum(b['weights'].sum() for b in online))
  assert written['padding_fraction'] == pytest.approx(1 - real / (20 * 128), abs=1e-5)
  assert sum(written['length_histogram'].values()) == 20
  assert params['output_files'] == ['data-00000-of-00001.arrayrecord']


def test_preprocess_packed_rows_feed_the_pipeline(input_dir, tmp_path, shared_data,
                                                  gpt2_tokenizer):
  out = tmp_path / 'packed'
  preprocess.preprocess(preprocess.parse_args([
      f'--input_dir={input_dir}', f'--tokenizer={shared_data / "gpt2"}', '--max_seq_length=128',
      '--pack_sequences', f'--output_dir={out}']))
  written = json.loads((out / 'data_params.json').read_text())
  assert written['rows_written'] < 20 and written['padding_fraction'] < 0.5
  batches = _batches(_cfg(str(out / '*.arrayrecord')), gpt2_tokenizer)
  assert sum(int(b['segment_ids'].max(1).sum()) for b in batches) == 20  # 20 segments in all
  assert sum(int((b['segment_ids'] > 0).sum()) for b in batches) == written['total_tokens']


def test_preprocess_never_leaves_a_half_written_output(input_dir, tmp_path, shared_data):
  gpt2 = shared_data / 'gpt2'
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('old')
  with pytest.raises(SystemExit, match='not empty'):
    preprocess.preprocess(preprocess.parse_args([f'--input_dir={input_dir}',
                                                 f'--tokenizer={gpt2}',
                                                 f'--output_dir={out}']))
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'broken.jsonl').write_text('{"instruction": "a", "output": "b"}\n{oops\n')
  with pytest.raises(ValueError, match=r'broken.jsonl:2: malformed JSON'):
    preprocess.preprocess(preprocess.parse_args([f'--input_dir={bad}', f'--tokenizer={gpt2}',
                                                 f'--output_dir={out}', '--overwrite']))
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temp left
  assert (out / 'keep.txt').read_text() == 'old'  # the old output is untouched


def test_inspect_batch_highlights_exactly_the_trained_tokens(tmp_path, gpt2_tokenizer):
  path = tmp_path / 'one.jsonl'
  path.write_text(json.dumps({'instruction': 'Say hi.', 'input': '', 'output': 'hi'}))
  html_path = tmp_path / 'batch.html'
  text = inspect_batch.inspect(_cfg(str(path)), gpt2_tokenizer, split='train', batch_size=2,
                               num_batches=1, color=False, html_path=str(html_path))
  assert '### Response:\n[hi][<|endoftext|>]' in text
  assert 'non-padding' in text and text.count('[') == 2
  page = html_path.read_text()
  assert page.count('class="trained"') == 2
  assert '<span class="trained">hi</span><span class="trained">&lt;|endoftext|&gt;</span>' in page


def test_preprocess_num_shards_with_worker_processes(input_dir, tmp_path, shared_data,
                                                     gpt2_tokenizer):
  out = tmp_path / 'sharded'
  params = preprocess.preprocess(preprocess.parse_args([
      f'--input_dir={input_dir}', f'--tokenizer={shared_data / "gpt2"}', '--max_seq_length=128',
      '--num_shards=3', '--num_workers=2', f'--output_dir={out}']))
  assert params['output_files'] == [f'data-0000{i}-of-00003.arrayrecord' for i in range(3)]
  assert params['examples_written'] == 20 and params['dropped'] == {'empty_response': 1,
                                                                     'too_long': 1}
  # Shards are contiguous ranges: read in name order (lazily), they are the online batches.
  online = _batches(_cfg([str(input_dir / 'part1.jsonl'), str(input_dir / 'part2.json')]),
                    gpt2_tokenizer)
  offline = _batches(_cfg(str(out / '*.arrayrecord')), gpt2_tokenizer)
  assert len(online) == len(offline) == 5
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(online, offline) for k in a)


def test_readme_preprocess_example_on_the_shared_folder(shared_data, tmp_path):
  """The README's --input_glob='*.jsonl' over ../shared/data picks up the self-instruct seed tasks
  (instruction + instances): each becomes the Alpaca record of its first instance."""
  params = preprocess.preprocess(preprocess.parse_args([
      f'--input_dir={shared_data}', '--input_glob=*.jsonl', f'--tokenizer={shared_data / "gpt2"}',
      '--max_seq_length=512', f'--output_dir={tmp_path / "out"}']))
  first = json.loads((shared_data / 'alpaca-seed-tasks.jsonl').read_text().splitlines()[0])
  assert params['examples_read'] == len((shared_data / 'alpaca-seed-tasks.jsonl').read_text()
                                         .splitlines())
  assert params['examples_written'] + sum(params['dropped'].values()) == params['examples_read']
  cfg = default_data_config()
  conv = formats.to_conversation(first, cfg, 'seed:1')
  instance = first['instances'][0]
  assert conv.turns[-1].text == instance['output'] and conv.turns[-1].trainable
  assert conv.turns[0].text == first['instruction'] + (
      '\n\n' + instance['input'] if instance['input'].strip() else '')
