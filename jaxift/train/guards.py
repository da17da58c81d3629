"""Divergence safety: skipped non-finite updates, the honest "last good checkpoint", collapse.

The optimizer skips an update whose gradient is not finite (`optax.apply_if_finite`, counted in
the step's `consecutive_skips` / `skipped_updates` metrics). This guard reads each step's fetched
metrics, one step late like everything else, and decides:

- a non-finite loss or a skipped update inside the limit: a warning, training goes on (a bad batch
  costs one update, not the run);
- past `train.max_consecutive_skips` in a row: stop. The streak began at step s, so the parameters
  after step s-1 are the ones that give non-finite losses; checkpoints from step s-1 on are removed
  and the error names the newest one left, which is then truly good;
- a gradient norm of exactly 0, or a loss at ln(vocab) (a uniform prediction), for
  `train.collapse_patience` steps in a row: stop as collapsed (AdamW at lr=1e4 ends there and used
  to report success).
"""
import dataclasses
import math


class NonFiniteLossError(FloatingPointError):
  """The training loss stayed NaN or Inf past the skip limit; no bad checkpoint is left."""


class TrainingCollapsedError(FloatingPointError):
  """Training collapsed: zero gradients or a uniform prediction for many steps in a row."""


# |loss - ln(vocab)| below this is a uniform prediction (a trained model is far below ln(V)).
UNIFORM_LOSS_TOLERANCE = 1e-3


@dataclasses.dataclass
class Verdict:
  skipped: bool = False  # this step's update was skipped (non-finite)
  stop_from_step: int | None = None  # stop: checkpoints from this step on hold bad parameters


@dataclasses.dataclass
class DivergenceGuard:
  max_consecutive_skips: int
  collapse_patience: int
  vocab_size: int
  streak_start: int | None = None  # first step of the current run of non-finite steps
  last_loss: float = math.nan
  zero_grad_steps: int = 0
  uniform_steps: int = 0

  def update(self, step: int, metrics: dict[str, float]) -> Verdict:
    """Reads one step's metrics; raises TrainingCollapsedError, returns what to do otherwise."""
    loss, skips = metrics["loss"], metrics.get("consecutive_skips")
    self.last_loss = loss
    skipped = skips is not None and skips > 0
    if math.isfinite(loss) and not skipped:
      self.streak_start = None
      self._check_collapse(step, loss, metrics.get("grad_norm", math.nan),
                           metrics.get("trained_tokens", 1.0))
      return Verdict()
    if self.streak_start is None:
      self.streak_start = step
    in_limit = skips is not None and 0 < skips <= self.max_consecutive_skips
    if in_limit:
      return Verdict(skipped=True)
    return Verdict(skipped=skipped, stop_from_step=self.streak_start - 1)

  def _check_collapse(self, step: int, loss: float, grad_norm: float, trained: float) -> None:
    if self.collapse_patience <= 0 or trained <= 0:
      return
    self.zero_grad_steps = self.zero_grad_steps + 1 if grad_norm == 0.0 else 0
    uniform = abs(loss - math.log(self.vocab_size)) < UNIFORM_LOSS_TOLERANCE
    self.uniform_steps = self.uniform_steps + 1 if uniform else 0
    if max(self.zero_grad_steps, self.uniform_steps) >= self.collapse_patience:
      what = (f"the gradient norm has been exactly 0 for {self.zero_grad_steps} steps"
              if self.zero_grad_steps >= self.collapse_patience else
              f"the loss has sat at ln(vocab) = {math.log(self.vocab_size):.4f} (a uniform "
              f"prediction) for {self.uniform_steps} steps")
      raise TrainingCollapsedError(
          f"training collapsed at step {step}: {what} (loss {loss:.4f}). The model no longer "
          "learns; lower optimizer.lr or add warmup (train.collapse_patience=0 turns this check "
          "off).")

  def message_for_skip(self, step: int, metrics: dict[str, float]) -> str:
    return (f"step {step}: non-finite loss or gradient (loss {metrics['loss']}); the update was "
            f"skipped ({int(metrics.get('consecutive_skips', 0))} in a row, at most "
            f"{self.max_consecutive_skips}; {int(metrics.get('skipped_updates', 0))} in all)")
