"""Built-in synthetic tasks: deterministic, exactly right, varied, disjoint splits, short."""
import re

from jaxift.data import sources, synthetic, tokenize
from jaxift.data.config import default_data_config


def _content(r):
  """The task's payload: the Alpaca input, or what follows the instruction's last ':'/quotes."""
  if r['input']:
    return r['input']
  quoted = re.findall(r"""["']([^"']+)["']""", r['instruction'])
  return quoted[-1] if quoted and r['task'] != 'count_letter' else r['instruction'].split(': ')[-1]


def test_answers_are_exact():
  records = synthetic.make_examples(400, seed=11, tasks=','.join(synthetic.TASKS))
  for r in records:
    x, out, task = _content(r), r['output'], r['task']
    if task == 'uppercase':
      assert out == x.upper() and out != x
    elif task == 'reverse_words':
      assert out.split() == x.split()[::-1]
    elif task == 'sort_numbers':
      nums = [int(n) for n in re.findall(r'\d+', x)]
      assert [int(n) for n in out.split(', ')] == sorted(nums)
    elif task == 'add_numbers':
      a, b = (int(n) for n in re.findall(r'\d+', r['instruction'] + ' ' + r['input']))
      assert int(out) == a + b
    elif task == 'count_letter':
      letter = re.search(r"letter '(\w)'", r['instruction']).group(1)
      word = r['input'] or re.findall(r"'(\w+)'|word (\w+)\.", r['instruction'])[-1]
      word = word if isinstance(word, str) else ''.join(word)
      assert int(out) == word.count(letter)
    elif task in ('first_word', 'last_word'):
      assert out == x.split()[0 if task == 'first_word' else -1]
    elif task == 'repeat_word':
      n = int(re.search(r'(\d) times', r['instruction']).group(1))
      assert out.split() == [out.split()[0]] * n
    elif task == 'reverse_word':
      word = r['input'] or re.findall(r'"(\w+)"|of (\w+)\.', r['instruction'])[-1]
      word = word if isinstance(word, str) else ''.join(word)
      assert out == word[::-1]
    assert '\n' not in out and out == out.strip()


def test_deterministic_varied_and_balanced():
  a = synthetic.make_examples(140, seed=3)
  assert a == synthetic.make_examples(140, seed=3)
  assert a != synthetic.make_examples(140, seed=4)
  tasks = [r['task'] for r in a]
  assert {t: tasks.count(t) for t in set(tasks)} == {t: 20 for t in synthetic.DEFAULT_TASKS}
  for task in synthetic.DEFAULT_TASKS:  # several phrasings per task, with and without input
    mine = [r for r in a if r['task'] == task]
    assert len({r['instruction'].split(':')[0][:12] for r in mine}) >= 3
    assert any(r['input'] for r in mine) and any(not r['input'] for r in mine)


def test_synthetic_source_splits_are_disjoint_and_short(gpt2_tokenizer):
  cfg = default_data_config()
  cfg.source = 'synthetic'
  cfg.synthetic.num_train, cfg.synthetic.num_validation, cfg.synthetic.num_test = 500, 50, 100
  splits = {s: sources.load_records(cfg, s) for s in sources.SPLITS}
  assert [len(splits[s]) for s in sources.SPLITS] == [500, 50, 100]
  keys = {s: {(r['instruction'], r['input']) for r in v} for s, v in splits.items()}
  assert not keys['train'] & keys['validation'] and not keys['train'] & keys['test']
  assert not keys['validation'] & keys['test']
  lengths = [len(tokenize.tokenize_record(r, cfg, gpt2_tokenizer)['inputs'])
             for r in splits['test']]
  assert max(lengths) <= 96  # quickstart sequences stay short on a CPU
