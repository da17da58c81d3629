"""Chat templates beyond ChatML, token by token against independent references: Qwen3 thinking
(not prefix-preserving), Llama 3.1 and Qwen3 tool calls, Mistral [INST], Gemma 3. The expected
tokens are built here from `apply_chat_template` renderings cut at hand-found character offsets."""
import copy

import pytest

from jaxift.data import tokenize
from jaxift.data.formats import RecordError
from tests.data import chat_templates as ct

IM_START, IM_END = 1, 2  # SmolLM2's <|im_start|> and <|im_end|>
TOOLS = [{'type': 'function', 'function': {
    'name': 'get_weather', 'description': 'Current weather in a city',
    'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}},
                   'required': ['city']}}}]
CALL = {'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}
TOOL_MESSAGES = [  # the reference messages (arguments as a dict, as transformers documents)
    {'role': 'system', 'content': 'Be brief.'},
    {'role': 'user', 'content': 'Weather in Paris?'},
    {'role': 'assistant', 'content': '', 'tool_calls': [CALL]},
    {'role': 'tool', 'content': '{"temp": 21}'},
    {'role': 'assistant', 'content': 'It is 21 C.'},
]
# The same conversation as a record: OpenAI shape, arguments as a JSON string.
TOOL_RECORD = {'tools': TOOLS, 'messages': [
    TOOL_MESSAGES[0], TOOL_MESSAGES[1],
    {'role': 'assistant', 'content': None, 'tool_calls': [
        {'id': 'c1', 'type': 'function',
         'function': {'name': 'get_weather', 'arguments': '{"city": "Paris"}'}}]},
    {'role': 'tool', 'tool_call_id': 'c1', 'content': '{"temp": 21}'},
    TOOL_MESSAGES[4]]}
# ShareGPT with function_call/observation turns and tools as a JSON string (LLaMA-Factory's shape).
SHAREGPT_TOOL_RECORD = {
    'tools': '[{"type": "function", "function": {"name": "get_weather", "description": "Current '
             'weather in a city", "parameters": {"type": "object", "properties": {"city": '
             '{"type": "string"}}, "required": ["city"]}}}]',
    'conversations': [
        {'from': 'system', 'value': 'Be brief.'},
        {'from': 'human', 'value': 'Weather in Paris?'},
        {'from': 'function_call',
         'value': '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {'from': 'observation', 'value': '{"temp": 21}'},
        {'from': 'gpt', 'value': 'It is 21 C.'}]}
CHAT = [
    {'role': 'system', 'content': 'Be brief.'},
    {'role': 'user', 'content': 'What is 2+2?'},
    {'role': 'assistant', 'content': 'Four.', 'reasoning_content': 'Two and two.'},
    {'role': 'user', 'content': 'And 3+3?'},
    {'role': 'assistant', 'content': 'Six, of course.', 'reasoning_content': 'Three and three.'},
]


def enc(tok, text):
  return tok.encode(text, add_special_tokens=False)


def full_tokens(ex):
  return ex['inputs'].tolist() + [int(ex['targets'][-1])]


def trained(ex):
  return ex['targets'][ex['weights'] > 0].tolist()


def render(tok, messages, template, gen=False, **kwargs):
  return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                 add_generation_prompt=gen, **kwargs)


def chat_cfg(cfg, template, **overrides):
  cfg.template, cfg.chat_template = 'tokenizer', template
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope='module')
def tagged_tokenizer(smollm2_tokenizer):
  """SmolLM2 with Llama 3 and Gemma turn markers as single special tokens."""
  tok = copy.deepcopy(smollm2_tokenizer)
  tok.add_tokens(['<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>',
                  '<start_of_turn>', '<end_of_turn>'], special_tokens=True)
  return tok


def test_qwen3_multi_turn_is_kept_and_masked_on_its_final_rendering(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  final = render(tok, CHAT, ct.QWEN3)
  # Why the prefix method cannot work: the template drops the first turn's reasoning once a later
  # user turn exists, and puts a think block into the last assistant turn only.
  assert 'Two and two.' not in final
  assert render(tok, CHAT[:3], ct.QWEN3) not in final
  assert '<|im_start|>assistant\n<think>\nThree and three.\n</think>\n\nSix, of course.' in final
  ex = tokenize.tokenize_record({'messages': CHAT}, chat_cfg(cfg, ct.QWEN3), tok)
  a1 = final.index('Four.')
  e1 = a1 + len('Four.<|im_end|>')
  a2 = final.index('Six, of course.')
  e2 = a2 + len('Six, of course.<|im_end|>')
  prompt2 = enc(tok, final[:a1]) + enc(tok, final[a1:e1]) + enc(tok, final[e1:a2])
  assert full_tokens(ex) == prompt2 + enc(tok, final[a2:e2]) + enc(tok, final[e2:])
  assert tok.decode(full_tokens(ex)) == final
  # Content and <|im_end|> of each turn; not the reasoning block, not the headers.
  assert trained(ex) == enc(tok, 'Four.') + [IM_END] + enc(tok, 'Six, of course.') + [IM_END]
  assert tokenize.prompt_tokens({'messages': CHAT}, cfg, tok) == prompt2
  assert full_tokens(ex)[:len(prompt2)] == prompt2


def test_qwen3_reasoning_inline_in_the_content(cfg, smollm2_tokenizer):
  # Dumps often keep the reasoning in the content; the template splits it out itself.
  tok = smollm2_tokenizer
  inline = [dict(m) for m in CHAT]
  for m in inline:
    if m['role'] == 'assistant':
      m['content'] = f"<think>\n{m.pop('reasoning_content')}\n</think>\n\n{m['content']}"
  assert render(tok, inline, ct.QWEN3) == render(tok, CHAT, ct.QWEN3)
  ex = tokenize.tokenize_record({'messages': inline}, chat_cfg(cfg, ct.QWEN3), tok)
  reference = tokenize.tokenize_record({'messages': CHAT}, cfg, tok)
  assert full_tokens(ex) == full_tokens(reference)
  assert trained(ex) == enc(tok, 'Four.') + [IM_END] + enc(tok, 'Six, of course.') + [IM_END]


def test_train_on_reasoning_trains_the_rendered_reasoning(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  cfg = chat_cfg(cfg, ct.QWEN3, train_on_reasoning=True)
  ex = tokenize.tokenize_record({'messages': CHAT}, cfg, tok)
  # The first turn's reasoning is not rendered by this template, so it cannot be trained.
  assert trained(ex) == (enc(tok, 'Four.') + [IM_END] +
                         enc(tok, '<think>\nThree and three.\n</think>\n\nSix, of course.') +
                         [IM_END])
  prompt = tokenize.prompt_tokens({'messages': CHAT}, cfg, tok)
  assert tok.decode(prompt).endswith('And 3+3?<|im_end|>\n<|im_start|>assistant\n')


def test_token_boundary_after_think_block_tokenized_apart(cfg, smollm2_tokenizer):
  # SmolLM2 makes '\n\n' one token alone but two before text: the training sequence takes the
  # pieces apart, which is what a generation prompt ending in '</think>\n\n' tokenizes to.
  tok = smollm2_tokenizer
  assert enc(tok, '</think>\n\nSix') != enc(tok, '</think>\n\n') + enc(tok, 'Six')
  single = CHAT[:2] + [{'role': 'assistant', 'content': 'Four.'}]
  cfg = chat_cfg(cfg, ct.QWEN3, chat_template_kwargs={'enable_thinking': False})
  ex = tokenize.tokenize_record({'messages': single}, cfg, tok)
  gen_prompt = render(tok, single[:2], ct.QWEN3, gen=True, enable_thinking=False)
  assert gen_prompt.endswith('<|im_start|>assistant\n<think>\n\n</think>\n\n')
  prompt = tokenize.prompt_tokens({'messages': single}, cfg, tok)
  assert prompt == enc(tok, gen_prompt)  # the inference prompt, token for token
  assert full_tokens(ex) == prompt + enc(tok, 'Four.') + [IM_END] + enc(tok, '\n')
  assert full_tokens(ex) != enc(tok, render(tok, single, ct.QWEN3))  # whole-text tokenization


def test_empty_think_block_of_the_template_is_not_trained_unless_asked(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  single = {'messages': CHAT[:2] + [{'role': 'assistant', 'content': 'Four.'}]}
  final = render(tok, single['messages'], ct.QWEN3)
  assert final.endswith('<|im_start|>assistant\n<think>\n\n</think>\n\nFour.<|im_end|>\n')
  ex = tokenize.tokenize_record(single, chat_cfg(cfg, ct.QWEN3), tok)
  assert trained(ex) == enc(tok, 'Four.') + [IM_END]
  cfg.train_on_empty_reasoning = True
  ex = tokenize.tokenize_record(single, cfg, tok)
  assert trained(ex) == enc(tok, '<think>\n\n</think>\n\nFour.') + [IM_END]


@pytest.mark.parametrize('template, kwargs', [(None, {}), (ct.QWEN3, {'enable_thinking': False})])
def test_prompt_of_a_chat_that_ends_with_a_user_turn(cfg, smollm2_tokenizer, template, kwargs):
  tok = smollm2_tokenizer
  open_chat = CHAT[:4]  # ends with the user's 'And 3+3?': generate the answer
  cfg = chat_cfg(cfg, template or '', chat_template_kwargs=kwargs)
  prompt = tokenize.prompt_tokens({'messages': open_chat}, cfg, tok)
  assert prompt == enc(tok, render(tok, open_chat, template, gen=True, **kwargs))


def test_template_kwargs_and_override_reach_training_and_prompt(cfg, smollm2_tokenizer, tmp_path):
  tok = smollm2_tokenizer
  template = ('{%- if persona %}<|im_start|>system\nYou are {{ persona }}.<|im_end|>\n{% endif %}'
              '{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n'
              '{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')
  msgs = [CHAT[1], {'role': 'assistant', 'content': 'Four.'}, {'role': 'user', 'content': 'Why?'},
          {'role': 'assistant', 'content': 'Math.'}]
  path = tmp_path / 'persona.jinja'
  path.write_text(template)
  for override in (template, str(path)):
    cfg = chat_cfg(cfg, override, chat_template_kwargs="{'persona': 'Bob'}")  # command-line text
    ex = tokenize.tokenize_record({'messages': msgs}, cfg, tok)
    assert full_tokens(ex) == enc(tok, render(tok, msgs, template, persona='Bob'))
    assert tok.decode(full_tokens(ex)).startswith('<|im_start|>system\nYou are Bob.')
    assert tokenize.prompt_tokens({'messages': msgs}, cfg, tok) == enc(
        tok, render(tok, msgs[:-1], template, gen=True, persona='Bob'))
    assert trained(ex) == enc(tok, 'Four.') + [IM_END] + enc(tok, 'Math.') + [IM_END]


def test_chat_template_needs_the_tokenizer_template(cfg, smollm2_tokenizer):
  cfg.template, cfg.chat_template = 'chatml', ct.QWEN3
  with pytest.raises(ValueError, match='no .tokenizer. entry'):
    tokenize.tokenize_record({'messages': CHAT}, cfg, smollm2_tokenizer)


def test_llama31_tool_calls_trained_tool_results_and_preamble_not(cfg, tagged_tokenizer):
  tok = tagged_tokenizer
  eot = tok.convert_tokens_to_ids('<|eot_id|>')
  final = render(tok, TOOL_MESSAGES, ct.LLAMA31_TOOLS, tools=TOOLS)
  ex = tokenize.tokenize_record(TOOL_RECORD, chat_cfg(cfg, ct.LLAMA31_TOOLS), tok)
  call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
  assert call in final and '"description": "Current weather in a city"' in final
  # Responses are tokenized apart from the header before them ('\n\n' then '{' would merge
  # differently in one string), as the generation prompt is at inference.
  c0, a0 = final.index(call), final.index('It is 21 C.')
  assert full_tokens(ex) == (enc(tok, final[:c0]) + enc(tok, final[c0:a0]) + enc(tok, final[a0:]))
  assert trained(ex) == enc(tok, call) + [eot] + enc(tok, 'It is 21 C.') + [eot]
  prompt = tokenize.prompt_tokens(TOOL_RECORD, cfg, tok)
  assert prompt == full_tokens(ex)[:len(enc(tok, final[:c0]) + enc(tok, final[c0:a0]))]
  assert tok.decode(prompt) == render(tok, TOOL_MESSAGES[:-1], ct.LLAMA31_TOOLS, gen=True,
                                      tools=TOOLS)
  # ShareGPT's function_call/observation, and Llama's 'ipython' role, are the same conversation.
  same = tokenize.tokenize_record(SHAREGPT_TOOL_RECORD, cfg, tok)
  ipython = copy.deepcopy(TOOL_RECORD)
  ipython['messages'][3]['role'] = 'ipython'
  for other in (same, tokenize.tokenize_record(ipython, cfg, tok)):
    assert full_tokens(other) == full_tokens(ex)
    assert other['weights'].tolist() == ex['weights'].tolist()


def test_roles_to_train_and_last_turn_only(cfg, tagged_tokenizer):
  tok = tagged_tokenizer
  eot = tok.convert_tokens_to_ids('<|eot_id|>')
  call = enc(tok, '{"name": "get_weather", "parameters": {"city": "Paris"}}') + [eot]
  answer = enc(tok, 'It is 21 C.') + [eot]
  cfg = chat_cfg(cfg, ct.LLAMA31_TOOLS)
  for roles, expected in ((('assistant',), answer), (('tool_call',), call)):
    cfg.roles_to_train = roles
    assert trained(tokenize.tokenize_record(TOOL_RECORD, cfg, tok)) == expected
  cfg.roles_to_train = ('assistant', 'tool_call')
  cfg.train_on_last_turn_only = True
  assert trained(tokenize.tokenize_record(TOOL_RECORD, cfg, tok)) == answer
  cfg.roles_to_train = ('user',)
  with pytest.raises(ValueError, match='never trained'):
    tokenize.tokenize_record(TOOL_RECORD, cfg, tok)


def test_qwen3_tool_calls_on_the_final_rendering(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  final = render(tok, TOOL_MESSAGES, ct.QWEN3, tools=TOOLS)
  # Rendered alone, the tool-call turn is the last one and gets a think block; later it has none.
  assert render(tok, TOOL_MESSAGES[:3], ct.QWEN3, tools=TOOLS) not in final
  ex = tokenize.tokenize_record(TOOL_RECORD, chat_cfg(cfg, ct.QWEN3), tok)
  call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
  c0 = final.index(call)
  c1 = c0 + len(call + '<|im_end|>')
  a0 = final.index('It is 21 C.')
  a1 = a0 + len('It is 21 C.<|im_end|>')
  assert full_tokens(ex) == (enc(tok, final[:c0]) + enc(tok, final[c0:c1]) +
                             enc(tok, final[c1:a0]) + enc(tok, final[a0:a1]) +
                             enc(tok, final[a1:]))
  assert trained(ex) == enc(tok, call) + [IM_END] + enc(tok, 'It is 21 C.') + [IM_END]
  same = tokenize.tokenize_record(SHAREGPT_TOOL_RECORD, cfg, tok)
  assert full_tokens(same) == full_tokens(ex)


# The chat with both assistant answers (Mistral templates render every turn).
TWO_ANSWERS = [CHAT[0], CHAT[1], {'role': 'assistant', 'content': 'Four.'}, CHAT[3],
               {'role': 'assistant', 'content': 'Six.'}]


def test_mistral_inst_template(cfg, gpt2_tokenizer):
  tok = gpt2_tokenizer
  eos = tok.eos_token_id
  msgs = TWO_ANSWERS
  final = render(tok, msgs, ct.MISTRAL)
  assert final == ('<|endoftext|>[INST] Be brief.\n\nWhat is 2+2? [/INST]Four.<|endoftext|>'
                   '[INST] And 3+3? [/INST]Six.<|endoftext|>')
  ex = tokenize.tokenize_record({'messages': msgs}, chat_cfg(cfg, ct.MISTRAL), tok)
  assert full_tokens(ex) == enc(tok, final)
  assert trained(ex) == enc(tok, 'Four.') + [eos] + enc(tok, 'Six.') + [eos]
  assert tokenize.prompt_tokens({'messages': msgs}, cfg, tok) == enc(
      tok, render(tok, msgs[:-1], ct.MISTRAL, gen=True))


def test_mistral_v3_system_in_last_user_turn_and_no_generation_prompt(cfg, gpt2_tokenizer):
  tok = gpt2_tokenizer
  eos = tok.eos_token_id
  msgs = TWO_ANSWERS
  final = render(tok, msgs, ct.MISTRAL_V3)
  # The system text shows only while the last message is a user turn: not prefix-preserving.
  assert final == ('<|endoftext|>[INST] What is 2+2?[/INST] Four.<|endoftext|>'
                   '[INST] And 3+3?[/INST] Six.<|endoftext|>')
  assert 'Be brief.' in render(tok, msgs[:2], ct.MISTRAL_V3, gen=True)
  ex = tokenize.tokenize_record({'messages': msgs}, chat_cfg(cfg, ct.MISTRAL_V3), tok)
  a1, a2 = final.index('Four.'), final.index('Six.')
  e1, e2 = a1 + len('Four.<|endoftext|>'), a2 + len('Six.<|endoftext|>')
  assert full_tokens(ex) == (enc(tok, final[:a1]) + enc(tok, final[a1:e1]) +
                             enc(tok, final[e1:a2]) + enc(tok, final[a2:e2]))
  assert trained(ex) == enc(tok, 'Four.') + [eos] + enc(tok, 'Six.') + [eos]  # not the ' '
  prompt = tokenize.prompt_tokens({'messages': msgs}, cfg, tok)
  assert prompt == full_tokens(ex)[:len(enc(tok, final[:a1]) +
                                        enc(tok, final[a1:e1]) + enc(tok, final[e1:a2]))]


def test_gemma3_template(cfg, tagged_tokenizer):
  tok = tagged_tokenizer
  end = tok.convert_tokens_to_ids('<end_of_turn>')
  msgs = [CHAT[0], CHAT[1], {'role': 'assistant', 'content': 'Four.'}, CHAT[3],
          {'role': 'assistant', 'content': 'Six, of course.'}]
  final = render(tok, msgs, ct.GEMMA3)
  assert '<start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n' \
      'Four.<end_of_turn>\n' in final
  ex = tokenize.tokenize_record({'messages': msgs}, chat_cfg(cfg, ct.GEMMA3), tok)
  assert full_tokens(ex) == enc(tok, final)
  assert trained(ex) == enc(tok, 'Four.') + [end] + enc(tok, 'Six, of course.') + [end]
  assert tokenize.prompt_tokens({'messages': msgs}, cfg, tok) == enc(
      tok, render(tok, msgs[:-1], ct.GEMMA3, gen=True))


def test_builtin_templates_refuse_tool_calls(cfg, smollm2_tokenizer):
  cfg.template = 'chatml'
  with pytest.raises(RecordError, match=r'^data.jsonl:4: .*cannot render tools') as e:
    tokenize.tokenize_record(TOOL_RECORD, cfg, smollm2_tokenizer, 'data.jsonl:4')
  assert e.value.reason == 'template_mismatch'


def test_reasoning_inline_with_a_prefix_preserving_template(cfg, smollm2_tokenizer):
  # SmolLM2's ChatML knows no reasoning: the block stays in the content, and is still recognised.
  tok = smollm2_tokenizer
  record = {'messages': [CHAT[1], {'role': 'assistant',
                                   'content': '<think>\nTwo and two.\n</think>\n\nFour.'}]}
  cfg.template = 'tokenizer'
  ex = tokenize.tokenize_record(record, cfg, tok)
  final = render(tok, record['messages'], None)
  a = final.index('Four.')
  assert full_tokens(ex) == enc(tok, final[:a]) + enc(tok, final[a:])
  assert trained(ex) == enc(tok, 'Four.') + [IM_END]
  cfg.train_on_reasoning = True
  ex = tokenize.tokenize_record(record, cfg, tok)
  assert full_tokens(ex) == enc(tok, final)
  assert trained(ex) == enc(tok, '<think>\nTwo and two.\n</think>\n\nFour.') + [IM_END]
