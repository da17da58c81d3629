"""Lazy sources: reads on demand, the cached byte-offset index (stale/corrupt -> rebuilt), Parquet
by row group, CSV/TSV (the classification -> instruction case), bad input named precisely."""
import json
import os
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxift.data import index as index_lib
from jaxift.data import pipeline, sources, tokenize

REVIEWS = ('Label, Text\n'
           'Complaint, My room was dirty and the sheets were stained.\n'
           'Praise, "Great staff, lovely ""view""\nand breakfast."\n'
           '\n'
           'Complaint, The air conditioning was broken all week.\n'
           'Praise, Spotless and quiet.\n')


@pytest.fixture
def icfg(cfg, tmp_path):
  cfg.index_dir = str(tmp_path / 'index')
  cfg.split_fractions = (1.0, 0.0, 0.0)
  return cfg


def test_csv_classification_rows_become_instructions(icfg, tmp_path, gpt2_tokenizer):
  path = tmp_path / 'reviews.csv'
  path.write_text(REVIEWS)
  icfg.update(dict(train_files=str(path), format='prompt_completion', prompt_key='Text',
                   completion_key='Label', shuffle=False, max_seq_length=64,
                   template='Classify the hotel review.\nReview: {Text}\nCategory: {response}'))
  records, _ = sources.load_split(icfg, 'train')
  assert [w.rsplit(':', 1)[1] for w, _ in records] == ['2', '3', '6', '7']  # file:line
  assert records[1][1] == {'Label': 'Praise', 'Text': 'Great staff, lovely "view"\nand breakfast.'}
  ex = tokenize.tokenize_record(records[0][1], icfg, gpt2_tokenizer)
  assert gpt2_tokenizer.decode(ex['inputs']).startswith(
      'Classify the hotel review.\nReview: My room was dirty')
  assert gpt2_tokenizer.decode(ex['targets'][ex['weights'] > 0]) == 'Complaint<|endoftext|>'
  batches = list(pipeline.make_iterator(icfg, gpt2_tokenizer, split='train', batch_size=2,
                                        shard_index=0, shard_count=1, seed=0, num_epochs=1))
  assert len(batches) == 2 and int(batches[0]['segment_ids'].max(1).sum()) == 2
  tsv = tmp_path / 'reviews.tsv'
  tsv.write_text('Label\tText\nPraise\tNice pool\n')
  icfg.train_files = str(tsv)
  assert sources.load_records(icfg, 'train') == [{'Label': 'Praise', 'Text': 'Nice pool'}]


def test_csv_without_the_column_names_it_and_the_columns_found(icfg, tmp_path, gpt2_tokenizer):
  path = tmp_path / 'reviews.csv'
  path.write_text(REVIEWS)
  icfg.update(dict(train_files=str(path), format='prompt_completion', prompt_key='review',
                   completion_key='Label'))
  with pytest.raises(ValueError, match=r"reviews.csv: no column 'review' \(data.prompt_key\); "
                     r"the columns found are \['Label', 'Text'\]"):
    sources.load_split(icfg, 'train')
  path.write_text('Label,Text\nPraise,ok,extra\n')
  icfg.prompt_key, icfg.shuffle = 'Text', False
  with pytest.raises(Exception, match=r'reviews.csv:2: row has 3 fields, the header has 2'):
    list(pipeline.make_iterator(icfg, gpt2_tokenizer, split='train', batch_size=1, shard_index=0,
                                shard_count=1, seed=0, num_epochs=1))


def test_index_is_cached_and_a_stale_or_corrupt_one_is_rebuilt(icfg, tmp_path):
  path = tmp_path / 'd.jsonl'
  path.write_text('\n'.join(json.dumps({'k': i}) for i in range(5)) + '\n')
  index, info = index_lib.load_or_build(str(path), 'jsonl', icfg.index_dir)
  assert info['built'] and index.n == 5 and os.path.exists(info['index_file'])
  again, info = index_lib.load_or_build(str(path), 'jsonl', icfg.index_dir)
  assert not info['built'] and isinstance(again.starts, np.memmap)  # mapped, not read
  path.write_text('\n'.join(json.dumps({'k': i}) for i in range(7)))  # changed: stale
  index, info = index_lib.load_or_build(str(path), 'jsonl', icfg.index_dir)
  assert info['built'] and index.n == 7
  cache = info['index_file']
  for garbage in (b'not an npy file', open(cache, 'rb').read()[:-16]):  # corrupt, truncated
    with open(cache, 'wb') as f:
      f.write(garbage)
    index, info = index_lib.load_or_build(str(path), 'jsonl', icfg.index_dir)
    assert info['built'] and index.n == 7
  assert not [p for p in os.listdir(icfg.index_dir) if p.endswith('.tmp')]  # atomic writes


def test_json_array_with_non_ascii_text_and_line_numbers(icfg, tmp_path):
  recs = [{'instruction': 'Übersetze «x»', 'output': '日本'}, {'instruction': 'b', 'output': 'ç'}]
  path = tmp_path / 'a.json'
  path.write_text(json.dumps(recs, indent=1, ensure_ascii=False))
  icfg.train_files = str(path)
  records, _ = sources.load_split(icfg, 'train')
  assert [r for _, r in records] == recs and records[1][0].endswith('a.json[1]')
  path.write_text('[{"a": 1},\n {"a": 2,}]')
  with pytest.raises(ValueError, match=r'a.json:2: malformed JSON'):
    sources.load_split(icfg, 'train')


def test_parquet_reads_only_the_row_groups_it_needs(icfg, tmp_path):
  rows = [{'instruction': f'i{k}', 'output': f'o{k}'} for k in range(100)]
  path = tmp_path / 'd.parquet'
  pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10)
  src = sources.open_file(str(path))
  assert len(src) == 100 and src[57] == (f'{path} row 57', rows[57])
  assert list(src._groups) == [5]  # only row group 5 was decoded
  assert [r for _, r in src] == rows and len(src._groups) == sources.ROW_GROUP_CACHE


def test_missing_file_names_its_path(icfg, tmp_path):
  icfg.train_files = [str(tmp_path / 'there.jsonl'), str(tmp_path / 'gone.jsonl')]
  (tmp_path / 'there.jsonl').write_text('{}\n')
  with pytest.raises(FileNotFoundError, match='gone.jsonl does not exist'):
    sources.load_split(icfg, 'train')


def test_sources_are_lazy_on_a_200k_record_file(icfg, tmp_path, gpt2_tokenizer):
  """The first batch reads a handful of records and allocates a few MB, not the whole file."""
  path = tmp_path / 'big.jsonl'
  line = {'instruction': 'Repeat the word.', 'input': 'x' * 200, 'output': 'word'}
  with open(path, 'w') as f:
    for k in range(200_000):
      line['output'] = f'word {k}'
      f.write(json.dumps(line) + '\n')
  icfg.train_files, icfg.max_seq_length, icfg.prefetch_buffer_size = str(path), 128, 0
  sources.load_split(icfg, 'train')  # builds the index (once; cached)
  sources._open_cached.cache_clear()
  tracemalloc.start()
  try:
    it = pipeline.make_iterator(icfg, gpt2_tokenizer, split='train', batch_size=4,
                                shard_index=0, shard_count=1, seed=0)
    next(it)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  src = sources.open_file(str(path), index_dir=icfg.index_dir)
  # Grain's to_iter_dataset reads a few hundred records ahead (ReadOptions.prefetch_buffer_size);
  # the records of the whole file as Python objects would be ~150 MB.
  assert src.reads < 1000, src.reads
  assert peak < 30e6, peak
