"""DPO, ORPO and SimPO against an independent PyTorch computation of the published formulas (TRL's
`dpo_loss`, ORPO's `odds_ratio_loss` and CPO's `simpo` loss written out in torch) on a tiny model
with the same weights: loss, metrics and gradients to 1e-5 in float32, for padded and packed pair
batches. Reference log-probs equal transformers' masked sums."""
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from jaxift.model import preference as pref
from jaxift.model.loading import load_model
from jaxift.train import step as step_lib

VOCAB = 97
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
T = 16


def _torch_model(seed: int):
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**LLAMA),
                                                        dtype=torch.float32)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(torch.randn_like(p) * 0.2)
  return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  torch.set_num_threads(2)
  out = {}
  for name, seed in (("policy", 0), ("reference", 1)):
    tm = _torch_model(seed)
    directory = tmp_path_factory.mktemp(name)
    tm.save_pretrained(directory)
    out[name] = (tm.eval(), load_model(directory)[0])
  return out


def _sequences(seed: int):
  """4 pairs: (prompt, chosen response, rejected response) token lists."""
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(4):
    prompt = rng.integers(0, VOCAB, rng.integers(2, 5)).tolist()
    pairs.append((prompt, rng.integers(0, VOCAB, rng.integers(2, 5)).tolist(),
                  rng.integers(0, VOCAB, rng.integers(2, 6)).tolist()))
  return pairs


def _batch(pairs, packed: bool):
  """Pair rows [2R, T] (row 2i chosen, 2i+1 rejected): one pair per row pair, or two pairs packed
  into each row pair (segment ids 1 and 2 in both rows)."""
  groups = [pairs[i:i + 2] for i in range(0, len(pairs), 2)] if packed else [[p] for p in pairs]
  rows = {k: [] for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
  for group in groups:
    for side in (1, 2):
      row = {k: np.zeros(T, np.float32 if k == "weights" else np.int32) for k in rows}
      at = 0
      for seg, pair in enumerate(group, start=1):
        tokens = pair[0] + pair[side]
        w = [0.0] * len(pair[0]) + [1.0] * len(pair[side])
        n = len(tokens) - 1
        row["inputs"][at:at + n] = tokens[:-1]
        row["targets"][at:at + n] = tokens[1:]
        row["weights"][at:at + n] = w[1:]
        row["segment_ids"][at:at + n] = seg
        row["positions"][at:at + n] = np.arange(n)
        at += n
      for k in rows:
        rows[k].append(row[k])
  return {k: jnp.asarray(np.stack(v)) for k, v in rows.items()}


def _torch_logps(model, pairs):
  """(chosen, rejected) masked log-prob sums and response lengths, one unpadded sequence each."""
  out = {"pc": [], "pr": [], "nc": [], "nr": []}
  for prompt, chosen, rejected in pairs:
    for side, resp in (("c", chosen), ("r", rejected)):
      tokens = torch.tensor([prompt + resp])
      logits = model(tokens).logits[0, :-1]
      lp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[0, 1:, None])[:, 0]
      out[f"p{side}"].append(lp[len(prompt) - 1:].sum())
      out[f"n{side}"].append(torch.tensor(float(len(resp))))
  return {k: torch.stack(v) for k, v in out.items()}


def _torch_loss(objective, opts, pol, ref):
  """The published formulas, as TRL writes them."""
  beta, ls = opts.beta, opts.label_smoothing
  if objective == "dpo":  # TRL DPOTrainer.dpo_loss, loss_type='sigmoid'
    logits = (pol["pc"] - pol["pr"]) - (ref["pc"] - ref["pr"])
    losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    chosen_r, rejected_r = beta * (pol["pc"] - ref["pc"]), beta * (pol["pr"] - ref["pr"])
    return losses.mean(), chosen_r, rejected_r
  ac, ar = pol["pc"] / pol["nc"], pol["pr"] / pol["nr"]
  if objective == "orpo":  # TRL ORPOTrainer.odds_ratio_loss + the chosen NLL (token mean)
    log_odds = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
    nll = -pol["pc"].sum() / pol["nc"].sum()
    return nll - (beta * F.logsigmoid(log_odds)).mean(), beta * ac, beta * ar
  # TRL CPOTrainer.cpo_loss, loss_type='simpo'
  logits = (ac - ar) - opts.gamma / beta
  losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
  return losses.mean(), beta * ac, beta * ar


OPTIONS = ml_collections.ConfigDict(dict(beta=0.7, label_smoothing=0.1, gamma=0.4))


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo"])
@pytest.mark.parametrize("packed", [False, True])
def test_loss_and_gradients_match_torch(models, objective, packed):
  pairs = _sequences(3)
  batch = _batch(pairs, packed)
  torch_policy, jax_policy = models["policy"]
  torch_ref, jax_ref = models["reference"]

  # torch: the published formula on transformers' log-probs; gradients of the final norm scale
  torch_policy.zero_grad()
  pol = _torch_logps(torch_policy, pairs)
  with torch.no_grad():
    ref = _torch_logps(torch_ref, pairs)
  want_loss, want_cr, want_rr = _torch_loss(objective, OPTIONS, pol, ref)
  want_loss.backward()
  want_grad = torch_policy.model.norm.weight.grad.numpy()

  graphdef, params = nnx.split(jax_policy)
  ref_params = nnx.split(jax_ref)[1]

  def loss_fn(params):
    logps, counts = pref.forward_pair_sums(nnx.merge(graphdef, params), batch)
    ref_logps = None
    if objective == "dpo":
      ref_logps, _ = pref.forward_pair_sums(nnx.merge(graphdef, ref_params), batch)
    sums = pref.pair_sums(objective, OPTIONS, logps, counts, ref_logps)
    return pref.objective_value(sums, pref.global_normalizers(batch)), sums

  (loss, sums), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  np.testing.assert_allclose(float(loss), want_loss.item(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grads["final_norm"]["scale"][...]), want_grad, atol=1e-5)
  got = pref.summarize(jax.device_get(sums))
  assert got["pairs"] == 4
  np.testing.assert_allclose(got["loss"], want_loss.item(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["rewards/chosen"], want_cr.mean().item(), atol=1e-5)
  np.testing.assert_allclose(got["rewards/rejected"], want_rr.mean().item(), atol=1e-5)
  np.testing.assert_allclose(got["rewards/margins"], (want_cr - want_rr).mean().item(), atol=1e-5)
  assert got["rewards/accuracies"] == pytest.approx((want_cr > want_rr).float().mean().item())
  np.testing.assert_allclose(got["logps/chosen"], pol["pc"].mean().item(), atol=1e-4)
  np.testing.assert_allclose(got["logps/rejected"], pol["pr"].mean().item(), atol=1e-4)


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo"])
def test_chunked_logps_equal_plain(models, objective):
  """`train.loss_chunk_size`: logits made 5 positions at a time (16 = 5 + 5 + 5 + 1, packed pairs
  whose sequences span chunks) give the plain path's loss, per-sequence sums and gradients of
  every parameter to 1e-5."""
  batch = _batch(_sequences(7), packed=True)
  graphdef, params = nnx.split(models["policy"][1])
  ref_params = nnx.split(models["reference"][1])[1]

  def loss_fn(params, chunk):
    logps, counts = pref.forward_pair_sums(nnx.merge(graphdef, params), batch, chunk)
    ref_logps = None
    if objective == "dpo":
      ref_logps, _ = pref.forward_pair_sums(nnx.merge(graphdef, ref_params), batch, chunk)
    sums = pref.pair_sums(objective, OPTIONS, logps, counts, ref_logps)
    return pref.objective_value(sums, pref.global_normalizers(batch)), (logps, counts)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=1)
  (want, (want_logps, want_counts)), want_grads = grad_fn(params, 0)
  (got, (got_logps, got_counts)), got_grads = grad_fn(params, 5)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_logps), np.asarray(want_logps), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got_counts), np.asarray(want_counts))
  assert float(jnp.abs(want_logps).sum()) > 0
  for path, g in jax.tree_util.tree_leaves_with_path(got_grads):
    w = dict(jax.tree_util.tree_leaves_with_path(want_grads))[path]
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, err_msg=str(path))


def test_reference_logps_are_transformers_masked_sums(models):
  pairs = _sequences(5)
  torch_ref, jax_ref = models["reference"]
  with torch.no_grad():
    want = _torch_logps(torch_ref, pairs)
  logps, counts = jax.jit(pref.forward_pair_sums)(jax_ref, _batch(pairs, packed=True))
  chosen, rejected = pref.pair_view(logps)
  np.testing.assert_allclose(np.asarray(chosen[:, 1:3]).reshape(-1), want["pc"].numpy(),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(rejected[:, 1:3]).reshape(-1), want["pr"].numpy(),
                             atol=1e-5)
  assert np.asarray(pref.pair_view(counts)[0][:, 1:3]).reshape(-1).tolist() == want["nc"].tolist()


def test_pair_micro_batches_keep_pairs_together():
  batch = {"inputs": jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)}
  micro = step_lib.split_pair_micro_batches(batch, 2)["inputs"][..., 0]
  assert micro.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]  # pairs 0, 2 | pairs 1, 3


def test_unknown_objective_names_the_key():
  with pytest.raises(ValueError, match=r"config.train.objective='ppo'.*'dpo'"):
    pref.check_objective("ppo")
