"""Loading a trained run for inference: the notebook API, evaluation and the export tools."""
from typing import Any

from etils import epath
from flax import nnx
import jax
import ml_collections

from jaxift.data.tokenizers import load_tokenizer
from jaxift.model import loading
from jaxift.model import lora as lora_lib
from jaxift.model.sharding import mesh_rules
from jaxift.workdir.checkpoints import Checkpointer, _describe, abstract_like, resolve_step
from jaxift.workdir.files import CONFIG_FILE, TOKENIZER_DIR, load_config, load_model_config


def load_for_inference(workdir: str | epath.Path, step: str | int = "latest", *,
                       mesh: jax.sharding.Mesh | None = None) -> tuple[Any, Any, ml_collections.ConfigDict]:
  """(model, tokenizer, config) of a training workdir at step 'latest', 'best' or an int.

  Full fine-tunes: the model is rebuilt from `model_config.json` (no pretrained weights are read)
  and the trained parameters restored into it. LoRA runs: the frozen base is rebuilt from its
  reference (`config.model.path`, or random init with `config.train.seed`) and the adapters
  restored. Onto `mesh` when given (else the default device).
  """
  workdir = epath.Path(workdir)
  if not (workdir / CONFIG_FILE).exists():
    raise FileNotFoundError(f"not a jaxift workdir (no config.json): {_describe(workdir)}")
  config = load_config(workdir)
  checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
  try:
    resolved = resolve_step(checkpointer, step, workdir)
    if lora_lib.enabled(config):  # the frozen base comes from its reference, the adapters from here
      model, _ = lora_lib.build_model(config, mesh=mesh, rules=mesh_rules(config),
                                      seed=int(config.train.seed))
      graphdef, adapters, rest = nnx.split(model, lora_lib.trainable_filter(config), ...)
      abstract_params = abstract_like(adapters)
      del model, adapters
    else:
      graphdef, abstract_params, rest, _ = loading.abstract_model(
          config.model, load_model_config(workdir), mesh, mesh_rules(config))
    restored = checkpointer.restore(resolved, abstract_params=abstract_params)
  finally:
    checkpointer.close()
  model = nnx.merge(graphdef, restored["params"], rest)
  tokenizer = load_tokenizer(str(workdir / TOKENIZER_DIR))
  return model, tokenizer, config
