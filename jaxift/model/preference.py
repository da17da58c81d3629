"""Preference objectives (DPO, ORPO, SimPO) as SUMS over pairs, exact over devices and micro-steps.

A pair batch (jaxift/data/preference.py) has rows [2B, T]: row 2i chosen, row 2i+1 rejected, and a
pair is one segment id s > 0 present in both rows (padding: s = 1; packing: s = 1..k). Per
sequence, `logps` is the masked sum of log p(target) over its trained tokens (the response and its
end token, by the SFT masking rules) and `count` the number of those tokens.

The published losses, per pair, with chosen/rejected policy log-probs pc, pr (sums), reference
log-probs rc, rr, lengths nc, nr, beta, label smoothing ls:
- DPO (Rafailov et al. 2023; TRL `sigmoid`): z = beta * ((pc - rc) - (pr - rr)),
  loss = -(1 - ls) log sigmoid(z) - ls log sigmoid(-z); rewards = beta * (p - r).
- ORPO (Hong et al. 2024; TRL ORPOTrainer): with averages ac = pc/nc, ar = pr/nr,
  log_odds = (ac - ar) - (log(1 - exp(ac)) - log(1 - exp(ar))),
  loss = NLL(chosen) - beta * log sigmoid(log_odds); rewards = beta * a. The NLL is the token mean
  over the chosen responses of the whole (global) batch, as TRL's.
- SimPO (Meng et al. 2024; TRL CPOTrainer loss_type='simpo'): z = beta * (ac - ar) - gamma,
  loss = -(1 - ls) log sigmoid(z) - ls log sigmoid(-z); rewards = beta * a.

`pair_sums` returns the numerators (loss and metric sums) of the pairs of a (micro-)batch; the step
divides by the number of pairs (and chosen tokens) of the whole global batch, known up front.
"""
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from jaxift.model import loss as loss_lib

OBJECTIVES = ("sft", "dpo", "orpo", "simpo")
REFERENCE_OBJECTIVES = ("dpo",)  # the objectives that read a reference model
METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected", "logps/accuracy")
SUM_KEYS = ("loss_sum", "pairs", "nll_sum", "chosen_tokens") + tuple(
    f"{k}_sum" for k in METRIC_KEYS)


def default_preference_config() -> ml_collections.ConfigDict:
  """Defaults of `config.preference` (read when train.objective is not 'sft')."""
  c = ml_collections.ConfigDict()
  c.beta = 0.1  # DPO: KL strength; ORPO: weight of the odds-ratio term (TRL's lambda); SimPO: scale
  c.label_smoothing = 0.0  # DPO/SimPO: conservative DPO (cDPO), the share of flipped labels
  c.gamma = 0.5  # SimPO: target reward margin gamma (TRL's simpo_gamma)
  return c


def check_objective(objective: str) -> str:
  if objective not in OBJECTIVES:
    raise ValueError(f"config.train.objective={objective!r} is not known; expected one of "
                     f"{list(OBJECTIVES)}")
  return objective


def token_logps(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log p(target) per position, float32."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return target_logit - jax.nn.logsumexp(logits_BxTxV, axis=-1)


def sequence_sums(logps_BxT: jax.Array, weights_BxT: jax.Array, segment_ids_BxT: jax.Array,
                  num_segments: int | None = None) -> tuple[jax.Array, jax.Array]:
  """(masked log-prob sums, trained-token counts), each [B, S] indexed by (row, segment id);
  S = T + 1 by default (segment ids are at most T, one token each); a chunk of a longer row passes
  its row's T + 1."""
  b, t = logps_BxT.shape
  s = t + 1 if num_segments is None else num_segments
  index = (jnp.arange(b)[:, None] * s + segment_ids_BxT).reshape(-1)
  w = weights_BxT.astype(jnp.float32)
  logp = jax.ops.segment_sum((w * logps_BxT).reshape(-1), index, num_segments=b * s)
  count = jax.ops.segment_sum(w.reshape(-1), index, num_segments=b * s)
  return logp.reshape(b, s), count.reshape(b, s)


def pair_view(x_2BxS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-sequence values [2B, S] -> (chosen [B, S], rejected [B, S])."""
  return x_2BxS[0::2], x_2BxS[1::2]


def valid_pairs(count_2BxS: jax.Array) -> jax.Array:
  """1.0 where a (row pair, segment) holds a pair: trained tokens on both sides."""
  c, r = pair_view(count_2BxS)
  return ((c > 0) & (r > 0)).astype(jnp.float32)


def global_normalizers(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Pairs and chosen trained tokens of a whole batch (the denominators of its objective)."""
  ones = jnp.ones(batch["weights"].shape, jnp.float32)
  _, count = sequence_sums(ones, batch["weights"], batch["segment_ids"])
  return {"pairs": jnp.sum(valid_pairs(count)),
          "chosen_tokens": jnp.sum(pair_view(count)[0] * valid_pairs(count))}


def _sigmoid_loss(z: jax.Array, label_smoothing: float) -> jax.Array:
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
          - label_smoothing * jax.nn.log_sigmoid(-z))


def _log1m_exp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, stable (and finite at x = 0 thanks to the clamp)."""
  x = jnp.minimum(x, -1e-7)
  return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def pair_sums(objective: str, options: Any, logps_2BxS: jax.Array, count_2BxS: jax.Array,
              ref_logps_2BxS: jax.Array | None = None) -> dict[str, jax.Array]:
  """Loss and metric numerators of the pairs of a batch (see the module docstring)."""
  mask = valid_pairs(count_2BxS)
  pc, pr = pair_view(logps_2BxS)
  nc, nr = pair_view(count_2BxS)
  beta = float(options.beta)
  ls = float(options.get("label_smoothing", 0.0))
  safe = lambda n: jnp.where(n > 0, n, 1.0)  # noqa: E731
  nll = jnp.zeros((), jnp.float32)
  if objective == "dpo":
    if ref_logps_2BxS is None:
      raise ValueError("the DPO objective needs reference log-probs")
    rc, rr = pair_view(jax.lax.stop_gradient(ref_logps_2BxS))
    chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
    losses = _sigmoid_loss(chosen_rewards - rejected_rewards, ls)
  elif objective in ("orpo", "simpo"):
    ac, ar = pc / safe(nc), pr / safe(nr)
    chosen_rewards, rejected_rewards = beta * ac, beta * ar
    if objective == "orpo":
      log_odds = (ac - ar) - (_log1m_exp(ac) - _log1m_exp(ar))
      losses = -beta * jax.nn.log_sigmoid(log_odds)
      nll = -jnp.sum(mask * pc)  # summed NLL of the chosen responses (divided by chosen tokens)
    else:
      losses = _sigmoid_loss(beta * (ac - ar) - float(options.gamma), ls)
  else:
    raise ValueError(f"no pair loss for objective {objective!r}")
  margins = chosen_rewards - rejected_rewards
  sums = {
      "loss_sum": jnp.sum(mask * losses),
      "pairs": jnp.sum(mask),
      "nll_sum": nll,
      "chosen_tokens": jnp.sum(mask * nc),
      "rewards/chosen_sum": jnp.sum(mask * chosen_rewards),
      "rewards/rejected_sum": jnp.sum(mask * rejected_rewards),
      "rewards/margins_sum": jnp.sum(mask * margins),
      "rewards/accuracies_sum": jnp.sum(mask * (chosen_rewards > rejected_rewards)),
      "logps/chosen_sum": jnp.sum(mask * pc),
      "logps/rejected_sum": jnp.sum(mask * pr),
      "logps/accuracy_sum": jnp.sum(mask * (pc > pr)),
  }
  return {k: jax.lax.stop_gradient(v) if k != "loss_sum" and k != "nll_sum" else v
          for k, v in sums.items()}


def objective_value(sums: dict[str, jax.Array], normalizers: dict[str, jax.Array]) -> jax.Array:
  """This (micro-)batch's share of the global objective: loss_sum / global pairs (+ for ORPO the
  chosen NLL / global chosen tokens)."""
  value = sums["loss_sum"] / jnp.maximum(normalizers["pairs"], 1.0)
  return value + sums["nll_sum"] / jnp.maximum(normalizers["chosen_tokens"], 1.0)


def summarize(sums: dict[str, Any]) -> dict[str, float]:
  """TRL-named means over pairs from summed (device or host) pair sums."""
  pairs = max(float(sums["pairs"]), 1.0)
  out = {k: float(sums[f"{k}_sum"]) / pairs for k in METRIC_KEYS}
  out["loss"] = (float(sums["loss_sum"]) / pairs
                 + float(sums["nll_sum"]) / max(float(sums["chosen_tokens"]), 1.0))
  out["nll_loss"] = float(sums["nll_sum"]) / max(float(sums["chosen_tokens"]), 1.0)
  out["pairs"] = float(sums["pairs"])
  return out


def forward_pair_sums(model, batch: dict[str, jax.Array],
                      loss_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """Per-sequence (log-prob sums, counts) [2B, T + 1] of a pair batch under `model`; past
  `loss_chunk` tokens a row's logits are made `loss_chunk` positions at a time
  (`train.loss_chunk_size`, as the SFT loss's `loss.chunked_forward_sums`)."""
  if not loss_chunk or batch["inputs"].shape[1] <= loss_chunk:
    logits_BxTxV = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    return sequence_sums(token_logps(logits_BxTxV, batch["targets"]), batch["weights"],
                         batch["segment_ids"])
  return chunked_forward_pair_sums(model, batch, chunk_size=loss_chunk)


def chunked_forward_pair_sums(model, batch: dict[str, jax.Array], *,
                              chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """`forward_pair_sums` without the full [2B, T, V] logits: a `lax.scan` over chunks of
  `chunk_size` positions adds each chunk's per-(row, segment) sums into [2B, T + 1] (a sequence may
  span chunks); `jax.checkpoint` on a chunk makes the backward pass recompute its logits instead
  of storing them. Peak logits memory: 2B * chunk_size * vocab * 4 bytes."""
  if chunk_size <= 0:
    raise ValueError(f"loss chunk_size must be > 0, got {chunk_size}")
  b, t = batch["inputs"].shape
  graphdef, state = nnx.split(model)
  hidden_BxTxD = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
  pad = loss_lib._pad_to_chunks  # pylint: disable=protected-access  (the SFT path's chunking)
  xs = (pad(hidden_BxTxD, chunk_size), pad(batch["targets"], chunk_size),
        pad(batch["weights"].astype(jnp.float32), chunk_size),
        pad(batch["segment_ids"], chunk_size))  # padded positions: weight 0, segment 0

  # The model state is an explicit argument (not a closure) so checkpoint/scan see it as an input
  # whose gradient (the LM head's) they accumulate over chunks.
  @jax.checkpoint
  def chunk_sums(state, hidden_BxKxD, targets_BxK, weights_BxK, segment_ids_BxK):
    logits_BxKxV = nnx.merge(graphdef, state).logits_from_hidden(hidden_BxKxD)
    return sequence_sums(token_logps(logits_BxKxV, targets_BxK), weights_BxK, segment_ids_BxK,
                         num_segments=t + 1)

  def body(acc, chunk):
    logp, count = chunk_sums(state, *chunk)
    return (acc[0] + logp, acc[1] + count), None

  zeros = jnp.zeros((b, t + 1), jnp.float32)
  (logp_BxS, count_BxS), _ = jax.lax.scan(body, (zeros, zeros), xs)
  return logp_BxS, count_BxS
