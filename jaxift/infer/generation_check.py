"""Exact match of greedy generations on held-out records (the quickstart's before/after check)."""
from typing import Any

import ml_collections

from jaxift.data import sources, tokenize
from jaxift.infer import metrics, sampler


def exact_match_eval(model: Any, tokenizer: Any, config: ml_collections.ConfigDict,
                     num_examples: int) -> dict[str, Any]:
  """{'exact_match': strict mean, 'exact_match_normalized': mean, 'examples': [...]}.

  Strict: the response equals the reference but for surrounding white space -- the headline, since
  the synthetic tasks have exactly one right answer ('MAGNET CALM WINDOW' is not 'Magnet calm
  window.'). Normalized (SQuAD-style: case, punctuation, articles) beside it. Prompts are exactly
  the tokens the model saw as prompt in training (`tokenize.prompt_tokens`); generation stops on
  the template's end-of-response tokens.
  """
  records = sources.load_records(config.data, config.eval.generate_split, limit=num_examples)
  if not records:
    raise ValueError(f"config.eval.generate_split={config.eval.generate_split!r} has no records")
  prompts = [tokenize.prompt_tokens(r, config.data, tokenizer) for r in records]
  references = [tokenize.response_text(r, config.data) for r in records]
  stop_ids = tokenize.stop_token_ids(tokenizer, config.data)
  generations = sampler.generate(
      model, tokenizer, prompts, max_new_tokens=config.eval.max_new_tokens, temperature=0.0,
      stop_token_ids=stop_ids, batch_size=min(config.eval.generate_batch_size, len(prompts)),
      progress=True)
  strict = [float(g.strip() == ref.strip()) for g, ref in zip(generations, references)]
  normalized = [metrics.exact_match(g, ref) for g, ref in zip(generations, references)]
  examples = [{"prompt": tokenizer.decode(p), "reference": ref, "generation": g, "correct": s}
              for p, ref, g, s in zip(prompts, references, generations, strict)]
  return {"exact_match": sum(strict) / len(strict),
          "exact_match_normalized": sum(normalized) / len(normalized), "examples": examples}


def format_examples(examples: list[dict[str, Any]], n: int) -> str:
  lines = []
  for ex in examples[:n]:
    mark = "OK " if ex["correct"] else "BAD"
    prompt = ex["prompt"].strip().replace("\n", " | ")[-120:]
    lines.append(f"  [{mark}] prompt: ...{prompt}\n        expected: {ex['reference']!r}\n"
                 f"        generated: {ex['generation']!r}")
  return "\n".join(lines)
