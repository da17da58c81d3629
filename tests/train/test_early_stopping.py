"""Early stopping: patience counts evaluations without improvement."""
from jaxift.train.early_stopping import EarlyStopping


def test_stops_after_patience_evals_without_improvement():
  es = EarlyStopping(patience=2)
  assert es.update(3.0, 10) and es.update(2.0, 20)
  assert not es.update(2.5, 30) and not es.should_stop
  assert not es.update(2.1, 40) and es.should_stop
  assert (es.best, es.best_step) == (2.0, 20)


def test_improvement_resets_and_zero_patience_never_stops():
  es = EarlyStopping(patience=2)
  es.update(3.0, 1), es.update(3.5, 2), es.update(1.0, 3)
  assert es.bad_evals == 0
  never = EarlyStopping(patience=0)
  for step in range(10):
    never.update(5.0 + step, step)
  assert not never.should_stop


def test_state_round_trip():
  es = EarlyStopping(patience=3)
  es.update(2.0, 5), es.update(2.5, 6)
  other = EarlyStopping(patience=3)
  other.load_state_dict(es.state_dict())
  assert (other.best, other.best_step, other.bad_evals) == (2.0, 5, 1)
