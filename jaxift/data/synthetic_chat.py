"""Synthetic multi-turn conversations with tool calls and reasoning (OpenAI message shape), for the
mask audit and the chat-pipeline measurement in docs/benchmarks.md. Deterministic per seed.

Kinds, drawn per conversation: `chat` (2-3 exchanges), `reasoning` (answers with
reasoning_content), `tool` (a call, its result, the answer), `leading` (starts with an assistant
greeting, dropped and counted), and a few malformed ones (`empty_user`: an empty user turn).
"""
import json

import numpy as np

TOOLS = [
    {'type': 'function', 'function': {
        'name': 'get_weather', 'description': 'Current weather of a city, in degrees Celsius',
        'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}},
                       'required': ['city']}}},
    {'type': 'function', 'function': {
        'name': 'add', 'description': 'Sum of two integers',
        'parameters': {'type': 'object', 'properties': {'a': {'type': 'integer'},
                                                        'b': {'type': 'integer'}},
                       'required': ['a', 'b']}}},
]
CITIES = ('Paris', 'Lima', 'Oslo', 'Cairo', 'Hanoi', 'Quito', 'Perth', 'Turin')
WORDS = ('apple', 'river', 'stone', 'cloud', 'tiger', 'lemon', 'piano', 'orbit', 'maple', 'coral')
KINDS = ('chat', 'reasoning', 'tool', 'leading', 'empty_user')
WEIGHTS = (0.3, 0.25, 0.3, 0.1, 0.05)


def _exchange(rng) -> tuple[str, str, str]:
  """(question, reasoning, answer) of a small checkable task."""
  a, b = (int(x) for x in rng.integers(1, 100, size=2))
  words = [str(w) for w in rng.choice(WORDS, size=3, replace=False)]
  if rng.random() < 0.5:
    return (f'What is {a} plus {b}?', f'{a} + {b}: add the tens, then the ones.',
            f'{a} plus {b} is {a + b}.')
  return (f'Sort these words: {", ".join(words)}.', 'Compare first letters, then the next.',
          ', '.join(sorted(words)) + '.')


def _tool_conversation(rng) -> list[dict]:
  if rng.random() < 0.5:
    city = str(rng.choice(CITIES))
    temp = int(rng.integers(-10, 35))
    call, result = {'name': 'get_weather', 'arguments': {'city': city}}, {'temp': temp}
    user, answer = f'How warm is it in {city}?', f'It is {temp} degrees in {city}.'
  else:
    a, b = (int(x) for x in rng.integers(100, 1000, size=2))
    call, result = {'name': 'add', 'arguments': {'a': a, 'b': b}}, {'sum': a + b}
    user, answer = f'Use the tool to add {a} and {b}.', f'The sum is {a + b}.'
  return [{'role': 'user', 'content': user},
          {'role': 'assistant', 'content': '',
           'tool_calls': [{'type': 'function',
                           'function': {'name': call['name'],
                                        'arguments': json.dumps(call['arguments'])}}]},
          {'role': 'tool', 'content': json.dumps(result)},
          {'role': 'assistant', 'content': answer}]


def make_conversations(n: int, seed: int = 0) -> list[dict]:
  """n records {'messages': [...], 'tools': [...]?, 'kind': ...}."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    kind = str(rng.choice(KINDS, p=WEIGHTS))
    messages = [{'role': 'system', 'content': 'You are a careful assistant.'}]
    if kind == 'tool':
      messages += _tool_conversation(rng)
    else:
      if kind == 'leading':
        messages.append({'role': 'assistant', 'content': 'Hello! How can I help?'})
      for _ in range(int(rng.integers(2, 4))):
        question, reasoning, answer = _exchange(rng)
        messages.append({'role': 'user', 'content': question})
        reply = {'role': 'assistant', 'content': answer}
        if kind == 'reasoning':
          reply['reasoning_content'] = reasoning
        messages.append(reply)
      if kind == 'empty_user':
        messages[1]['content'] = ''
    record = {'messages': messages, 'kind': kind}
    if kind == 'tool':
      record['tools'] = TOOLS
    out.append(record)
  return out


def plain(record: dict) -> dict:
  """The same conversation as text turns only (no tools, calls or reasoning): the ChatML
  baseline."""
  messages = []
  for m in record['messages']:
    if m.get('tool_calls'):
      fn = m['tool_calls'][0]['function']
      messages.append({'role': 'assistant', 'content': f'{fn["name"]}({fn["arguments"]})'})
    elif m['role'] == 'tool':
      messages.append({'role': 'user', 'content': m['content']})
    else:
      messages.append({'role': m['role'], 'content': m['content']})
  return {'messages': messages, 'kind': record['kind']}
