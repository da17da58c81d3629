"""Built-in instruction tasks with exactly checkable one-line answers (the quickstart's data).

Each task draws its content from a seeded `random.Random`, so `make_examples(n, seed)` is the same
list on every machine. Phrasings vary (several instruction wordings, with and without an Alpaca
`input` section) so a model learns the task, not one sentence. Answers are one line with no extra
text: a small pretrained model rarely answers in exactly that form before fine-tuning.
"""
import random
from typing import Callable, Sequence

WORDS = (
    'apple river stone cloud green silver tiger paper window garden music yellow orange winter '
    'summer candle forest bridge rocket planet ocean pencil mirror castle dragon violin coffee '
    'butter honey lemon sugar pepper carrot tomato banana cherry mango melon peach grape olive '
    'rabbit turtle falcon parrot monkey zebra horse camel eagle shark whale lizard spider beetle '
    'hammer ladder basket blanket bottle button camera carpet engine feather guitar helmet island '
    'jacket kettle lantern magnet needle pillow rocket saddle shadow ticket tunnel wallet wagon '
    'anchor bakery circle desert energy fabric galaxy harbor insect jungle kitten meadow market '
    'number object palace puzzle quartz ribbon signal timber unicorn valley wizard yogurt zipper '
    'blue red quick lazy happy brave calm dark early fresh gentle heavy little proud quiet sharp '
    'sweet tall warm wild young').split()
LETTERS = 'aeilnorst'


def _phrase(rng: random.Random, lo: int = 2, hi: int = 4) -> str:
  return ' '.join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _pick(rng, instructions: Sequence[str], inline: Sequence[str], content: str, **kw):
  """Either an instruction plus an Alpaca input section, or everything inline."""
  if rng.random() < 0.5:
    return rng.choice(instructions).format(**kw), content
  return rng.choice(inline).format(x=content, **kw), ''


def uppercase(rng):
  p = _phrase(rng)
  ins, inp = _pick(rng, ['Convert the text to upper case.', 'Write the input in capital letters.',
                         'Rewrite the following phrase in all caps.'],
                   ['Convert to upper case: {x}', 'Write "{x}" in capital letters.',
                    'Put this phrase in all caps: {x}'], p)
  return ins, inp, p.upper()


def reverse_words(rng):
  words = [rng.choice(WORDS) for _ in range(rng.randint(3, 5))]
  ins, inp = _pick(rng, ['Reverse the order of the words.', 'Write the words in reverse order.',
                         'List these words from last to first.'],
                   ['Reverse the order of the words: {x}', 'Write these words backwards, last '
                    'word first: {x}', 'Put the words in reverse order: {x}'], ' '.join(words))
  return ins, inp, ' '.join(reversed(words))


def sort_numbers(rng):
  nums = rng.sample(range(1, 100), rng.randint(3, 5))
  ins, inp = _pick(rng, ['Sort the numbers in ascending order.', 'Order these numbers from '
                         'smallest to largest.', 'Arrange the numbers in increasing order.'],
                   ['Sort in ascending order: {x}', 'Order from smallest to largest: {x}',
                    'Arrange these numbers in increasing order: {x}'],
                   ', '.join(map(str, nums)))
  return ins, inp, ', '.join(map(str, sorted(nums)))


def add_numbers(rng):
  a, b = rng.randint(1, 99), rng.randint(1, 99)
  ins, inp = _pick(rng, ['Add the two numbers.', 'Compute the sum.', 'What is the sum of these '
                         'numbers?'],
                   ['What is {a} + {b}?', 'Add {a} and {b}.', 'Compute the sum of {a} and {b}.'],
                   f'{a} + {b}', a=a, b=b)
  return ins, inp, str(a + b)


def count_letter(rng):
  letter = rng.choice(LETTERS)
  word = rng.choice([w for w in WORDS if letter in w] if rng.random() < 0.8 else WORDS)
  ins, inp = _pick(rng, ["How many times does the letter '{c}' appear in the word?",
                         "Count the letter '{c}' in the word."],
                   ["How many times does the letter '{c}' appear in '{x}'?",
                    "Count the letter '{c}' in the word {x}."], word, c=letter)
  return ins, inp, str(word.count(letter))


def _edge_word(rng, which: str, index: int):
  p = _phrase(rng, 3, 5)
  ins, inp = _pick(rng, [f'What is the {which} word of the text?', f'Give the {which} word.',
                         f'Which word comes {which} in this phrase?'],
                   [f'What is the {which} word of: {{x}}', f'Give the {which} word of "{{x}}".',
                    f'Name the {which} word in: {{x}}'], p)
  return ins, inp, p.split()[index]


def first_word(rng):
  return _edge_word(rng, 'first', 0)


def last_word(rng):
  return _edge_word(rng, 'last', -1)


def repeat_word(rng):
  word, n = rng.choice(WORDS), rng.randint(2, 4)
  ins, inp = _pick(rng, ['Repeat the word {n} times, separated by spaces.',
                         'Write the word {n} times.'],
                   ['Repeat the word "{x}" {n} times.', 'Write {x} {n} times, separated by '
                    'spaces.'], word, n=n)
  return ins, inp, ' '.join([word] * n)


def reverse_word(rng):
  word = rng.choice([w for w in WORDS if len(w) <= 5])
  ins, inp = _pick(rng, ['Spell the word backwards.', 'Reverse the letters of the word.'],
                   ['Spell "{x}" backwards.', 'Reverse the letters of {x}.'], word)
  return ins, inp, word[::-1]


TASKS: dict[str, Callable] = {f.__name__: f for f in (
    uppercase, reverse_words, sort_numbers, add_numbers, count_letter, first_word, last_word,
    repeat_word, reverse_word)}
# What a 135M model learns in minutes on a CPU: character-level tasks (count_letter, reverse_word)
# are hard for BPE models and only taken when asked for.
DEFAULT_TASKS = ('uppercase', 'reverse_words', 'sort_numbers', 'add_numbers', 'first_word',
                 'last_word', 'repeat_word')


def _task_names(tasks) -> list[str]:
  names = [t.strip() for t in tasks.split(',')] if isinstance(tasks, str) else list(tasks or [])
  names = [t for t in names if t] or list(DEFAULT_TASKS)
  unknown = [t for t in names if t not in TASKS]
  if unknown:
    raise ValueError(f'unknown synthetic tasks {unknown}; available: {sorted(TASKS)}')
  return names


def make_examples(n: int, seed: int, tasks=None, exclude: frozenset = frozenset()) -> list[dict]:
  """n distinct Alpaca records (instruction, input, output, task), tasks in turn, none in exclude
  (keys `instruction + '\\n' + input`)."""
  names = _task_names(tasks)
  rng = random.Random(seed)
  seen, out = set(exclude), []
  for i in range(n):
    task = names[i % len(names)]
    for _ in range(1000):
      ins, inp, answer = TASKS[task](rng)
      if ins + '\n' + inp not in seen:
        break
    else:
      raise ValueError(f'synthetic task {task!r} ran out of distinct examples (n={n})')
    seen.add(ins + '\n' + inp)
    out.append({'instruction': ins, 'input': inp, 'output': answer, 'task': task})
  return out


def _key(r: dict) -> str:
  return r['instruction'] + '\n' + r['input']


def make_splits(cfg) -> dict[str, list[dict]]:
  """train / validation / test from separate seed streams; held-out prompts never occur in train."""
  train = make_examples(cfg.num_train, cfg.seed, cfg.tasks)
  seen = frozenset(map(_key, train))
  validation = make_examples(cfg.num_validation, cfg.seed + 1_000_003, cfg.tasks, seen)
  seen |= frozenset(map(_key, validation))
  test = make_examples(cfg.num_test, cfg.seed + 2_000_006, cfg.tasks, seen)
  return {'train': train, 'validation': validation, 'test': test}
