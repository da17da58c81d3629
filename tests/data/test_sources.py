"""Sources (JSON, JSONL, Parquet, ArrayRecord, saved HF dataset) and deterministic splits."""
import json

import pytest

from jaxift.data import sources

RECORDS = [{'instruction': f'i{k}', 'input': '', 'output': f'o{k}'} for k in range(10)]


def _write_all(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  from array_record.python import array_record_module
  paths = {'json': tmp_path / 'd.json', 'jsonl': tmp_path / 'd.jsonl',
           'parquet': tmp_path / 'd.parquet', 'arrayrecord': tmp_path / 'd.arrayrecord'}
  paths['json'].write_text(json.dumps(RECORDS))
  paths['jsonl'].write_text('\n'.join(json.dumps(r) for r in RECORDS) + '\n')
  pq.write_table(pa.Table.from_pylist(RECORDS), paths['parquet'])
  writer = array_record_module.ArrayRecordWriter(str(paths['arrayrecord']), 'group_size:1')
  for r in RECORDS:
    writer.write(json.dumps(r).encode())
  writer.close()
  return paths


@pytest.mark.parametrize('kind', ['json', 'jsonl', 'parquet', 'arrayrecord'])
def test_every_file_type_reads_the_same_records(cfg, tmp_path, kind):
  path = _write_all(tmp_path)[kind]
  cfg.train_files, cfg.split_fractions = str(path), (1.0, 0.0, 0.0)
  assert sources.load_records(cfg, 'train') == RECORDS


def test_saved_hf_dataset_and_epath(cfg, tmp_path):
  import datasets
  from etils import epath
  datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / 'hf'))
  cfg.train_files, cfg.split_fractions = str(tmp_path / 'hf'), (1.0, 0.0, 0.0)
  assert sources.load_records(cfg, 'train') == RECORDS
  paths = _write_all(tmp_path)
  cfg.train_files = [str(epath.Path(paths['jsonl'])), str(paths['json'])]
  assert sources.load_records(cfg, 'train') == RECORDS + RECORDS


def test_fraction_split_in_file_order_like_llms_from_scratch(cfg, shared_data):
  path = shared_data / 'instruction-data.json'
  data = json.loads(path.read_text())
  assert len(data) == 1100
  cfg.train_files = str(path)  # 0.85 / 0.05 / 0.10
  assert sources.load_records(cfg, 'train') == data[:935]
  assert sources.load_records(cfg, 'test') == data[935:1045]
  assert sources.load_records(cfg, 'validation') == data[1045:]


def test_seeded_split_is_a_deterministic_partition(cfg, tmp_path):
  path = tmp_path / 'd.jsonl'
  path.write_text('\n'.join(json.dumps({'instruction': str(k), 'output': 'o'})
                            for k in range(100)))
  cfg.train_files, cfg.split_seed = str(path), 7
  splits = {s: [r['instruction'] for r in sources.load_records(cfg, s)] for s in sources.SPLITS}
  assert [len(v) for v in splits.values()] == [85, 5, 10]
  assert sorted(sum(splits.values(), []), key=int) == [str(k) for k in range(100)]
  assert splits['train'] != [str(k) for k in range(85)]
  assert splits == {s: [r['instruction'] for r in sources.load_records(cfg, s)]
                    for s in sources.SPLITS}


def test_separate_split_files(cfg, tmp_path):
  paths = _write_all(tmp_path)
  cfg.train_files, cfg.validation_files = str(paths['json']), str(paths['jsonl'])
  assert sources.load_records(cfg, 'validation') == RECORDS
  with pytest.raises(ValueError, match='test_files'):
    sources.load_records(cfg, 'test')


def test_malformed_json_line_names_file_and_line(cfg, tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_text(json.dumps(RECORDS[0]) + '\n' + '{"instruction": "x", \n' +
                  json.dumps(RECORDS[1]) + '\n')
  cfg.train_files, cfg.split_fractions = str(path), (1.0, 0.0, 0.0)
  with pytest.raises(ValueError, match=r'bad.jsonl:2: malformed JSON'):
    sources.load_records(cfg, 'train')
  cfg.skip_invalid = True
  records, counts = sources.load_split(cfg, 'train')
  assert [r for _, r in records] == RECORDS[:2]
  assert records[1][0].endswith('bad.jsonl:3')
  assert counts['invalid_json'] == 1


def test_missing_file_and_empty_glob_are_clear(cfg, tmp_path):
  cfg.train_files = str(tmp_path / 'nope.json')
  with pytest.raises(FileNotFoundError, match='nope.json does not exist'):
    sources.load_records(cfg, 'train')
  cfg.train_files = str(tmp_path / '*.parquet')
  with pytest.raises(FileNotFoundError, match='no file matches'):
    sources.load_records(cfg, 'train')
