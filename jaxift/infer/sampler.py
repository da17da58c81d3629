"""Batched generation with a KV cache: one jitted prefill, then jitted `lax.while_loop` decode segments.

Prompts of different lengths are LEFT-padded to a common length P (rounded up to `prompt_bucket`
so a notebook does not recompile for every prompt length): padding has segment id 0, real tokens
segment id 1, and positions count from 0 at each row's first real token (the model contract in
docs/design.md). The prefill writes cache slots 0..P-1 and samples the first new token from the
last column; the decode loop feeds one token per step at slot P+step-1, with position
`prompt_len + step - 1`, until every row has emitted a stop token or `max_new_tokens` is reached.
Rows that stopped are masked to `pad_id`; once the rows still generating fit in half the batch
they go on as a smaller batch (`drop_finished`).

Every decode step attends over the whole cache it is given (slots beyond the filled ones are
masked, but still cost reads), so the cache does not start at P + max_new_tokens slots: it grows
through a few lengths from one ladder (`cache_lengths`), with the loop state donated so the cache
is updated in place. The host looks at the state every `check_every` steps (which rows have
stopped?), never per token.

On the CPU a scanned model decodes over per-layer slices of its weights taken once per call
(`_decode_layout`, `Decoder.unstacked_layers`). The jitted functions take the model as
`nnx.split` state with the graphdef static, so compiled code is reused across calls and across
models with the same structure and shapes.
"""
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
import tqdm

from jaxift.data import tokenize
from jaxift.infer import sampling
from jaxift.model.cache import KVCache

def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens_BxP, positions_BxP, segment_ids_BxP) with each prompt right-aligned."""
  batch = len(prompts)
  tokens = np.full((batch, length), pad_id, np.int32)
  positions = np.zeros((batch, length), np.int32)
  segments = np.zeros((batch, length), np.int32)
  for b, prompt in enumerate(prompts):
    n = len(prompt)
    tokens[b, length - n:] = prompt
    positions[b, length - n:] = np.arange(n)
    segments[b, length - n:] = 1
  return tokens, positions, segments

@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "greedy", "per_layer"))
def _prefill(graphdef, state, tokens_BxP, positions_BxP, segments_BxP, rng, temperature, top_k,
             top_p, *, cache_len: int, greedy: bool, per_layer: bool):
  """The first new token and the cache holding the prompt (per layer for the decode if asked:
  the prefill itself may be a scan over layers, which writes a stacked cache)."""
  model = nnx.merge(graphdef, state)
  cache = model.init_cache(tokens_BxP.shape[0], cache_len)
  logits_Bx1xV, cache = model.forward_with_cache(tokens_BxP, positions_BxP, segments_BxP, cache,
                                                 cache_index=0, last_logits_only=True)
  first_B = sampling.select_next(logits_Bx1xV[:, -1].astype(jnp.float32), rng, greedy=greedy,
                                 temperature=temperature, top_k=top_k, top_p=top_p)
  return first_B, cache.per_layer() if per_layer else cache

@functools.partial(jax.jit, static_argnames=("graphdef", "fuse_projections"))
def _unstacked_layers(graphdef, state, *, fuse_projections: bool):
  return nnx.merge(graphdef, state).unstacked_layers(fuse_projections=fuse_projections)

@struct.dataclass
class DecodeState:
  """The decode loop's carry (as the Flax Gemma sampler keeps it): one named field per piece."""
  step: jax.Array  # int32: index of the next token to write into `out_BxN`
  cache: Any  # the model's cache: a KVCache for the Decoder
  token_B: jax.Array  # the token fed at this step
  position_B: jax.Array  # its position in its own sequence
  done_B: jax.Array  # bool: the row has emitted a stop token
  out_BxN: jax.Array  # generated tokens so far (pad_id after a row is done)
  rng: jax.Array

@functools.partial(jax.jit, static_argnames=("max_new_tokens",), donate_argnames=("cache",))
def _start_state(cache, first_B, next_position_B, stop_ids_S, pad_id, rng, *,
                 max_new_tokens: int) -> DecodeState:
  return DecodeState(
      step=jnp.int32(1), cache=cache, token_B=first_B, position_B=next_position_B,
      done_B=jnp.isin(first_B, stop_ids_S),
      out_BxN=jnp.full((first_B.shape[0], max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first_B),
      rng=rng)

# The carry is donated: the cache (the largest buffer of generation) is updated in place across
# segments instead of being copied at the start of each.
@functools.partial(jax.jit, static_argnames=("graphdef", "greedy"), donate_argnames=("start",))
def _decode_segment(graphdef, state, layers, start: DecodeState, end_step, prompt_len, stop_ids_S,
                    pad_id, temperature, top_k, top_p, *, greedy: bool) -> DecodeState:
  """Decode steps `start.step .. end_step - 1` (fewer if every row stops) on device.

  Step `s` writes cache slot `prompt_len + s - 1`, so the cache must hold `prompt_len + end_step
  - 1` slots; every step attends over all of them (masked beyond the filled ones), which is why the
  caller grows the cache in buckets instead of allocating `prompt_len + max_new_tokens` at once.
  `layers`: the model's `unstacked_layers()` or None (see `generate_tokens`).
  """
  batch = start.token_B.shape[0]

  def cond(s: DecodeState):
    return (s.step < end_step) & ~jnp.all(s.done_B)

  def body(s: DecodeState) -> DecodeState:
    model = nnx.merge(graphdef, state)
    logits_Bx1xV, cache = model.forward_with_cache(
        s.token_B[:, None], s.position_B[:, None], jnp.ones((batch, 1), jnp.int32), s.cache,
        cache_index=prompt_len + s.step - 1, **({} if layers is None else {"layers": layers}))
    rng, step_rng = jax.random.split(s.rng)
    next_B = sampling.select_next(logits_Bx1xV[:, -1].astype(jnp.float32), step_rng,
                                  greedy=greedy, temperature=temperature, top_k=top_k,
                                  top_p=top_p)
    next_B = jnp.where(s.done_B, pad_id, next_B)
    return DecodeState(
        step=s.step + 1, cache=cache, token_B=next_B, position_B=s.position_B + 1,
        done_B=s.done_B | jnp.isin(next_B, stop_ids_S),
        out_BxN=jax.lax.dynamic_update_slice(s.out_BxN, next_B[:, None], (0, s.step)), rng=rng)

  return jax.lax.while_loop(cond, body, start)

@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _grow_cache(graphdef, state, s: DecodeState, *, cache_len: int) -> DecodeState:
  """The carry with its cache copied into the first slots of an empty cache of `cache_len` slots
  (the model's own `init_cache`, so empty slots are what the model expects: segment id 0)."""
  model = nnx.merge(graphdef, state)
  empty = model.init_cache(s.token_B.shape[0], cache_len)
  if isinstance(s.cache, KVCache) and s.cache.is_per_layer:
    empty = empty.per_layer()
  cache = jax.tree.map(lambda new, old: jax.lax.dynamic_update_slice(
      new, old.astype(new.dtype), (0,) * old.ndim), empty, s.cache)
  return s.replace(cache=cache)

@jax.jit
def _take_rows(s: DecodeState, rows_b, filler_b) -> DecodeState:
  """The decode state of rows `rows_b` (a smaller batch); `filler_b` rows are marked done."""
  def take(a, axis=0):
    return jnp.take(a, rows_b, axis=axis)
  if isinstance(s.cache, KVCache):
    stacked = 0 if s.cache.is_per_layer else 1  # [layers, batch, ...] or per layer [batch, ...]
    cache = KVCache(k=jax.tree.map(lambda a: take(a, stacked), s.cache.k),
                    v=jax.tree.map(lambda a: take(a, stacked), s.cache.v),
                    segment_ids=take(s.cache.segment_ids))
  else:  # another model's cache: batch-major leaves
    cache = jax.tree.map(take, s.cache)
  return s.replace(cache=cache, token_B=take(s.token_B), position_B=take(s.position_B),
                   done_B=take(s.done_B) | filler_b, out_BxN=take(s.out_BxN))

def _keep_tokens(s: DecodeState, rows: np.ndarray, out_PxN: np.ndarray) -> None:
  """Copies the batch's generated tokens into their prompts' rows of `out_PxN` (not fillers')."""
  real = rows >= 0
  out_PxN[rows[real]] = np.asarray(s.out_BxN)[real]

def _drop_finished_rows(s: DecodeState, rows: np.ndarray, done: np.ndarray, out_PxN: np.ndarray
                        ) -> tuple[DecodeState, np.ndarray, np.ndarray]:
  """(state, rows, done) of a smaller batch once the rows still generating fit in half of it: a
  batch of the next power of two (copies of one row, marked done, fill it up), the finished rows'
  tokens kept in `out_PxN`; the same batch otherwise. `rows`: each row's prompt, -1 for fillers."""
  active = np.flatnonzero(~done)
  smaller = 1 << max(len(active) - 1, 0).bit_length()
  if not 0 < len(active) or smaller > len(done) // 2:
    return s, rows, done
  _keep_tokens(s, rows, out_PxN)
  take = np.concatenate([active, np.full(smaller - len(active), active[0])]).astype(np.int32)
  filler = np.arange(smaller) >= len(active)
  s = _take_rows(s, take, filler)
  return s, np.where(filler, -1, rows[take]), np.asarray(s.done_B)

def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple

def ladder_ceil(n: int) -> int:
  """The smallest cache length >= n of the form 2^k or 3 * 2^k (..., 64, 96, 128, 192, 256, ...).

  Cache lengths come from this one ladder, whatever the prompt length, so a decode segment's
  compiled code (its shapes are the batch and the cache length) serves every prompt bucket; the
  ladder's steps (x1.5, x1.33) bound the slots attended to in vain."""
  if n <= 2:
    return max(n, 1)
  power = 1 << (n - 1).bit_length()  # smallest 2^k >= n
  return 3 * power // 4 if 3 * power // 4 >= n else power

def cache_lengths(prompt_len: int, max_new_tokens: int, first: int) -> list[int]:
  """Total cache lengths (prompt slots included) of the decode segments: the first holds at least
  `first` new tokens, each next one at least twice the new tokens of the one before, the last
  `max_new_tokens`; each rounded up to `ladder_ceil`.

  A decode step costs attention over every cache slot, filled or not; growing the cache in a few
  segments keeps that near the filled length while compiling only a handful of shapes.
  """
  if first < 1:
    raise ValueError(f"cache_bucket must be >= 1, got {first}")
  need = prompt_len + max_new_tokens
  lengths = [ladder_ceil(prompt_len + min(first, max_new_tokens))]
  while lengths[-1] < need:
    lengths.append(ladder_ceil(min(prompt_len + 2 * (lengths[-1] - prompt_len), need)))
  return lengths

def _decode_layout(model, batch: int) -> tuple[bool, bool]:
  """(decode over `Decoder.unstacked_layers`, keep the KV cache per layer) for this model.

  On the CPU a scanned layer copies its weights out of the stacked arrays at every decode step (a
  third of a SmolLM2 step at batch 1), so the decode runs over per-layer slices taken once per
  call: a second copy of the layer weights while it runs, so not on accelerators, where memory is
  the scarcer resource and the copy was not measured. Layers run one by one read a per-layer KV
  cache in place (`KVCache.per_layer`), except at batch 1, where XLA:CPU fuses each cache update
  into two consumers and copies the cache to keep them apart (measured no faster than the stacked
  slices: 27.1 vs 26.7 ms per SmolLM2 step, within noise)."""
  if not hasattr(model, "unstacked_layers"):  # another model with the cache interface
    return False, False
  unstack = model.scan_layers and jax.default_backend() == "cpu"
  return unstack, (unstack or not model.scan_layers) and batch > 1

def generate_tokens(model: nnx.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                    stop_token_ids: Sequence[int] = (), pad_id: int = 0, seed: int = 0,
                    prompt_bucket: int = 16, cache_bucket: int = 32, check_every: int = 32,
                    drop_finished: bool = True) -> list[list[int]]:
  """New token ids per prompt, cut before the first stop token (which is not included).

  temperature 0 is greedy (argmax); otherwise tokens are drawn after temperature, top-k (0 = off)
  and top-p (1 = off) filtering, from `jax.random.key(seed)`. The KV cache starts with room for
  at least `cache_bucket` new tokens and grows (one decode segment per size, see
  `cache_lengths`) only while some row is still generating; `cache_bucket >= max_new_tokens`
  allocates it all at once.

  Every `check_every` steps the host looks at which rows have stopped (one small transfer): when
  every row has, generation ends; with `drop_finished`, when the rows still generating fit in
  half the batch, they continue as a batch of the next power of two (the finished rows' tokens
  are kept), so a batch whose one row runs to `max_new_tokens` does not keep paying for the
  others. Greedy tokens do not depend on it; sampled ones do (the batch's draws are split anew).
  """
  if not prompts:
    return []
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  for i, prompt in enumerate(prompts):
    if len(prompt) == 0:
      raise ValueError(f"prompt {i} is empty: generation needs at least one prompt token")
  if temperature < 0 or not 0.0 <= top_p <= 1.0 or top_k < 0:
    raise ValueError(f"need temperature >= 0, 0 <= top_p <= 1, top_k >= 0; got "
                     f"temperature={temperature}, top_p={top_p}, top_k={top_k}")
  prompt_len = _round_up(max(len(p) for p in prompts), prompt_bucket)
  lengths = cache_lengths(prompt_len, max_new_tokens, cache_bucket)
  tokens, positions, segments = left_pad(prompts, prompt_len, pad_id)
  greedy = temperature == 0.0
  graphdef, state = nnx.split(model)
  unstack, per_layer = _decode_layout(model, len(prompts))
  decoding = max_new_tokens > 1
  # One row: fused q/k/v and gate/up products (bound by reading the weights; slower from batch 8).
  layers = (_unstacked_layers(graphdef, state, fuse_projections=len(prompts) == 1)
            if unstack and decoding else None)
  prefill_rng, decode_rng = jax.random.split(jax.random.key(seed))
  sampling_args = (jnp.float32(max(temperature, 1e-6)), jnp.int32(top_k), jnp.float32(top_p))
  first_B, cache = _prefill(graphdef, state, tokens, positions, segments, prefill_rng,
                            *sampling_args, cache_len=lengths[0], greedy=greedy,
                            per_layer=per_layer and decoding)
  stop_ids = np.asarray(sorted(set(stop_token_ids)) or [-1], np.int32)
  next_position = np.asarray([len(p) for p in prompts], np.int32)
  s = _start_state(cache, first_B, next_position, stop_ids, jnp.int32(pad_id), decode_rng,
                   max_new_tokens=max_new_tokens)
  rows = np.arange(len(prompts))  # the prompt of each row of the (maybe shrunk) batch; -1 filler
  out = np.full((len(prompts), max_new_tokens), pad_id, np.int32)
  step, done = 1, np.asarray(s.done_B)
  for i, cache_len in enumerate(lengths):
    if done.all():
      break
    if i > 0:
      s = _grow_cache(graphdef, state, s, cache_len=cache_len)
    # Step `k` writes slot prompt_len + k - 1: this cache serves steps up to cache_len - prompt_len.
    last = min(cache_len - prompt_len + 1, max_new_tokens)
    while step < last and not done.all():
      step = min(step + max(check_every, 1), last)
      s = _decode_segment(graphdef, state, layers, s, jnp.int32(step), jnp.int32(prompt_len),
                          stop_ids, jnp.int32(pad_id), *sampling_args, greedy=greedy)
      done = np.asarray(s.done_B)  # one host sync per `check_every` steps, not per token
      if drop_finished:
        s, rows, done = _drop_finished_rows(s, rows, done, out)
  _keep_tokens(s, rows, out)
  results = []
  stop_set = set(int(t) for t in stop_token_ids)
  for row in out.tolist():
    cut = next((i for i, t in enumerate(row) if t in stop_set), len(row))
    results.append(row[:cut])
  return results

def generate_tokens_sorted(model: nnx.Module, prompts: Sequence[Sequence[int]], *,
                           batch_size: int, seed: int = 0, progress: bool = False,
                           **kwargs) -> list[list[int]]:
  """`generate_tokens` over many prompts, `batch_size` at a time, in the input order.

  Prompts are sorted by length (longest first) before they are cut into batches, so each batch
  pads to a similar length and rows of similar prompts tend to finish together; every batch has
  `batch_size` rows (the last is filled with copies) so one compilation serves them all. With
  sampling, the batch starting at sorted position `s` draws from `seed + s`. `progress`: a
  progress bar over the batches (on a terminal).
  """
  order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
  results: list[list[int]] = [[] for _ in prompts]
  batch_size = max(1, min(batch_size, len(prompts)))
  starts = range(0, len(order), batch_size)
  for start in tqdm.tqdm(starts, desc="generating", unit="batch", leave=False,
                         disable=not progress or len(starts) < 2):
    chunk = [list(prompts[i]) for i in order[start:start + batch_size]]
    filler = [chunk[-1]] * (batch_size - len(chunk))
    new_tokens = generate_tokens(model, chunk + filler, seed=seed + start, **kwargs)
    for i, tokens in zip(order[start:start + batch_size], new_tokens):
      results[i] = tokens
  return results

def encode_prompt(tokenizer, text: str) -> list[int]:
  """Token ids of an already templated prompt: the tokenizer's special tokens, never a double BOS."""
  ids = list(tokenizer.encode(text, add_special_tokens=True))
  bos = getattr(tokenizer, "bos_token_id", None)
  if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
    ids = ids[1:]
  return ids

def trim_at_stop_strings(text: str, stop_strings: Sequence[str] | None) -> str:
  """The text before the earliest occurrence of any stop string."""
  cut = len(text)
  for stop in stop_strings or ():
    if stop:
      found = text.find(stop)
      if found != -1:
        cut = min(cut, found)
  return text[:cut]

def generate(model: nnx.Module, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]], *,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_token_ids: Sequence[int] | None = None,
             stop_strings: Sequence[str] | None = None, seed: int = 0,
             batch_size: int | None = None, progress: bool = False) -> list[str]:
  """Responses to `prompts` (token id lists from `tokenize.prompt_tokens`, or templated strings).

  Stops on `stop_token_ids` (default: `tokenize.stop_token_ids(tokenizer)`, EOS and the
  end-of-turn tokens the tokenizer knows) during decoding; `stop_strings` are cut from the decoded
  text afterwards. `batch_size` splits long prompt lists into batches of similar lengths (None = all
  at once); the results keep the input order.
  """
  token_prompts = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p)
                   for p in prompts]
  if stop_token_ids is None:
    stop_token_ids = tokenize.stop_token_ids(tokenizer)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  new_tokens = generate_tokens_sorted(
      model, token_prompts, batch_size=batch_size or max(len(token_prompts), 1), seed=seed,
      progress=progress,
      max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
      stop_token_ids=stop_token_ids, pad_id=pad_id)
  texts = [trim_at_stop_strings(tokenizer.decode(t, skip_special_tokens=True), stop_strings)
           for t in new_tokens]
  return texts
