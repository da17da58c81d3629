"""Every experiment config loads; variants are typed and checked; runlocal shrinks."""
import pytest

from jaxift.model import sharding
from jaxift.train import config as config_lib
from tests.train.conftest import REPO_ROOT, load_config_file

CONFIGS = ["quickstart", "tiny", "smollm2_alpaca", "gpt2_medium_alpaca", "llama3_8b_tpu",
           "qwen2_5_0_5b", "smollm2_dpo"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_has_every_section_and_runlocal_shrinks(name):
  path = REPO_ROOT / "configs" / f"{name}.py"
  c = load_config_file(path)
  assert set(c.keys()) >= {"data", "model", "tokenizer", "mesh", "optimizer", "train",
                           "checkpoint", "eval"}
  assert c.train.num_steps > 0 or c.train.num_epochs > 0
  small = load_config_file(path, "runlocal")
  assert 0 < small.train.num_steps <= 5 and small.train.global_batch_size <= 4
  assert small.train.num_epochs == 0
  assert tuple(small.mesh.shape) == (1, -1, 1)


def test_gpt2_medium_recipe_matches_the_book():
  c = load_config_file(REPO_ROOT / "configs" / "gpt2_medium_alpaca.py",
                       "model=/m/gpt2-medium,data=/d/instruction-data.json")
  assert (c.model.path, c.data.train_files) == ("/m/gpt2-medium", "/d/instruction-data.json")
  assert (c.optimizer.lr, c.optimizer.weight_decay, c.train.num_epochs) == (5e-5, 0.1, 2)
  assert (c.train.global_batch_size, c.train.seed) == (8, 123)
  assert tuple(c.data.split_fractions) == (0.85, 0.05, 0.10)
  assert c.data.template == "alpaca"


def test_parse_arg_types_and_errors():
  a = config_lib.parse_arg("steps=7,lr=0.5,name=x,flag", steps=1, lr=1.0, name="", flag=False)
  assert (a.steps, a.lr, a.name, a.flag) == (7, 0.5, "x", True)
  with pytest.raises(ValueError, match="unknown key 'stpes'"):
    config_lib.parse_arg("stpes=3", steps=1)


def test_mesh_rules_survive_a_json_round_trip():
  c = config_lib.base_config()
  import json
  import ml_collections
  back = ml_collections.ConfigDict(json.loads(c.to_json_best_effort()))
  assert sharding.mesh_rules(back) == sharding.mesh_rules(c)
  assert ("batch", ("data", "fsdp")) in sharding.mesh_rules(back)


def test_preference_config_and_unknown_objective():
  c = load_config_file(REPO_ROOT / "configs" / "smollm2_dpo.py", "objective=orpo,steps=30")
  assert c.lora.enabled and c.data.pairs and c.train.objective == "orpo"
  assert c.data.split_fractions == (0.85, 0.05, 0.10) and c.data.split_seed is None
  assert c.evals.validation == "preference"
  sft = config_lib.apply_objective(config_lib.base_config())
  assert not sft.data.pairs and sft.evals.validation == "validation_loss"
  dpo = config_lib.base_config()
  dpo.train.objective = "dpo"
  config_lib.apply_objective(dpo)
  assert dpo.data.pairs and dpo.evals.validation == "preference"
  bad = config_lib.base_config()
  bad.train.objective = "rlhf"
  with pytest.raises(ValueError, match="config.train.objective='rlhf'"):
    config_lib.apply_objective(bad)
