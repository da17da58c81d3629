"""Early stopping on validation loss (the seeds' rule: stop where validation loss stops improving)."""
import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
  """`update(loss)` after each evaluation; `should_stop` once `patience` evaluations in a row
  failed to beat the best loss by more than `min_delta`. `patience <= 0` never stops."""
  patience: int = 0
  min_delta: float = 0.0
  best: float = math.inf
  best_step: int = -1
  bad_evals: int = 0

  def update(self, loss: float, step: int) -> bool:
    """Records one evaluation; returns True when it is a new best."""
    if loss < self.best - self.min_delta:
      self.best, self.best_step, self.bad_evals = float(loss), int(step), 0
      return True
    self.bad_evals += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.bad_evals >= self.patience

  def state_dict(self) -> dict:
    return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

  def load_state_dict(self, state: dict) -> None:
    self.best = float(state.get("best", math.inf))
    self.best_step = int(state.get("best_step", -1))
    self.bad_evals = int(state.get("bad_evals", 0))
