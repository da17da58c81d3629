"""Hugging Face checkpoints: read a directory (single or sharded safetensors), resolve a hub id,
and export a jaxift model to a directory `transformers.AutoModelForCausalLM` loads as is.
"""
import json
import os
import pathlib
import re
import shutil
from typing import Any, Iterator

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy reader needs)
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file
import tqdm

from jaxift import fileio
from jaxift.model import weights
from jaxift.model.config import ModelConfig

INDEX_FILE = "model.safetensors.index.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


class SafetensorsSource:
  """Tensors of an HF directory, read one at a time (memory-mapped by safetensors)."""

  def __init__(self, directory: pathlib.Path):
    self.description = str(directory)
    index = directory / INDEX_FILE
    if index.exists():
      with open(index) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no 'weight_map' object")
      self._file_of = {name: directory / file for name, file in weight_map.items()}
      for file in set(self._file_of.values()):
        if not file.exists():
          raise FileNotFoundError(f"{index} names {file.name}, which is not in {directory}")
    else:
      files = sorted(directory.glob("*.safetensors"))
      if not files:
        raise FileNotFoundError(
            f"{directory} has no weights: expected model.safetensors or sharded *.safetensors with "
            f"{INDEX_FILE} (PyTorch .bin checkpoints are not read; re-save with safetensors)")
      self._file_of = {}
      for file in files:
        with safe_open(str(file), framework="numpy") as f:
          self._file_of.update({name: file for name in f.keys()})
    self._handles: dict[pathlib.Path, Any] = {}
    self._stored = {name: name for name in self._file_of}  # canonical name -> name in the file

  def alias_renamed(self, stored_prefix: str, canonical_prefix: str) -> None:
    """Also answer to `canonical_prefix + rest` for each `stored_prefix + rest` (gemma3's
    multimodal files keep the text model under `model.language_model.`)."""
    for name in list(self._stored):
      if name.startswith(stored_prefix):
        self._stored.setdefault(canonical_prefix + name[len(stored_prefix):], name)

  def alias_prefix(self, prefix: str) -> None:
    """Also answer to `prefix + name` (original GPT-2 files lack the `transformer.` prefix)."""
    for name in list(self._stored):
      self._stored.setdefault(prefix + name, name)

  def _open(self, name: str):
    file = self._file_of[self._stored[name]]
    if file not in self._handles:
      self._handles[file] = safe_open(str(file), framework="numpy")
    return self._handles[file]

  def keys(self) -> set[str]:
    return set(self._stored)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open(name).get_slice(self._stored[name]).get_shape())

  def get(self, name: str) -> np.ndarray:
    return self._open(name).get_tensor(self._stored[name])


def resolve_path(path: str) -> pathlib.Path:
  """A local path as is; otherwise a hub id downloaded with huggingface_hub (clear error offline)."""
  local = pathlib.Path(path).expanduser()
  if local.exists():
    return local
  if not _HUB_ID.match(path):
    raise FileNotFoundError(f"model path {path!r} does not exist (and is not a hub id 'org/name')")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise FileNotFoundError(f"{path!r} is not a local path; downloading hub ids needs "
                            f"huggingface_hub (pip install 'jaxift[hf]')") from e
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(repo_id=path,
                                                          allow_patterns=_HUB_PATTERNS))
  except Exception as e:  # pylint: disable=broad-except  (offline, gated, missing repo, ...)
    raise OSError(
        f"could not fetch {path!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
        f"Offline? Download it where you are online, or set config.model.path to a local "
        f"directory or .gguf file.") from e


def open_hf_dir(directory: pathlib.Path) -> tuple[ModelConfig, SafetensorsSource]:
  config_file = directory / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{directory} has no config.json (expected a Hugging Face model dir)")
  cfg = ModelConfig.from_json_file(config_file)
  source = SafetensorsSource(directory)
  if cfg.family == "gpt2":
    source.alias_prefix("transformer.")
  if cfg.family == "gemma3":  # Gemma3ForConditionalGeneration: the text model's tensors only
    source.alias_renamed("model.language_model.", "model.")
  return cfg, source


# ---- export ----------------------------------------------------------------------------------------

def _to_host(value: jax.Array) -> np.ndarray:
  """The full array on this host (gathers shards across processes when needed)."""
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(jax.device_get(value))


def hf_tensors(model, cfg: ModelConfig, *, progress: bool = False,
               desc: str = "export") -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array) pairs, one tensor at a time (fused tensors joined from their parts).
  `progress`: a bar over the tensors on stderr (process 0 only), as they are gathered."""
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  scan = model.scan_layers
  groups = list(_group_by_hf_name(weights.rules_for(cfg)).values())
  total = sum(cfg.num_hidden_layers if g[0].per_layer else 1 for g in groups)
  bar = tqdm.tqdm(total=total, desc=desc, unit="tensor", dynamic_ncols=True,
                  disable=not progress or jax.process_index() != 0)
  with bar:
    for rule_list in groups:
      yield from _rule_tensors(flat, rule_list, cfg, scan, bar)


def _rule_tensors(flat, rule_list, cfg: ModelConfig, scan: bool, bar):
  """One HF tensor per layer (or one) for a group of rules sharing an HF name."""
  first = rule_list[0]
  layers = range(cfg.num_hidden_layers) if first.per_layer else [None]
  for i in layers:
    parts = []
    for rule in rule_list:
      if not rule.per_layer:
        value = _to_host(flat[rule.path][...])
      elif scan:
        value = _to_host(flat[("layers",) + rule.path][...][i])
      else:
        value = _to_host(flat[("layers", i) + rule.path][...])
      parts.append(np.ascontiguousarray(rule.to_hf(value)))
    yield first.name(i), (parts[0] if len(parts) == 1
                          else np.concatenate(parts, axis=first.part_axis))
    bar.update()


def _group_by_hf_name(rules: list[weights.Rule]) -> dict[str, list[weights.Rule]]:
  groups: dict[str, list[weights.Rule]] = {}
  for rule in rules:
    groups.setdefault(rule.hf_name, []).append(rule)
  for group in groups.values():
    group.sort(key=lambda r: r.part[0] if r.part else 0)
  return groups


def export_hf(model, cfg: ModelConfig, out_dir, *, tokenizer=None,
              max_shard_size: int = 2 * 1024**3, dtype: str | None = None,
              progress: bool = False) -> pathlib.Path:
  """Writes config.json, safetensors (sharded with an index above `max_shard_size` bytes),
  generation_config.json and the tokenizer files; into a temp dir renamed at the end."""
  out_dir = pathlib.Path(out_dir)
  writer = jax.process_index() == 0
  tmp = None
  if writer:
    tmp = pathlib.Path(fileio.staging_dir(out_dir))
  try:
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    out_dtype = None
    # Shards are filled in order and written once full; names are fixed after the last one.
    for name, value in hf_tensors(model, cfg, progress=progress, desc=f"export {out_dir.name}"):
      if dtype is not None:
        value = value.astype(jnp.dtype(dtype))
      out_dtype = out_dtype or value.dtype
      if sizes[-1] and sizes[-1] + value.nbytes > max_shard_size:
        if writer:
          save_file(shards[-1], str(tmp / f"shard-{len(shards)}.part"), metadata={"format": "pt"})
        shards[-1] = {k: None for k in shards[-1]}  # keep names, drop data
        shards.append({})
        sizes.append(0)
      shards[-1][name] = value
      sizes[-1] += value.nbytes
    if writer:
      _finish_files(tmp, shards, sum(sizes), cfg, tokenizer, str(out_dtype))
      fileio.replace_dir(tmp, out_dir)
      tmp = None
  finally:
    if tmp is not None and tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def _finish_files(tmp: pathlib.Path, shards, total_size: int, cfg: ModelConfig, tokenizer,
                  dtype_name: str):
  n = len(shards)
  if n == 1:
    save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
  else:
    save_file(shards[-1], str(tmp / f"shard-{n}.part"), metadata={"format": "pt"})
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
      file = f"model-{k:05d}-of-{n:05d}.safetensors"
      os.replace(tmp / f"shard-{k}.part", tmp / file)
      weight_map.update({name: file for name in shard})
    with open(tmp / INDEX_FILE, "w") as f:
      json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)
  config = dict(cfg.to_hf_dict(), torch_dtype=dtype_name, dtype=dtype_name)
  with open(tmp / "config.json", "w") as f:
    json.dump(config, f, indent=2)
  generation = {k: v for k, v in dict(bos_token_id=cfg.bos_token_id,
                                      eos_token_id=config["eos_token_id"],
                                      pad_token_id=cfg.pad_token_id).items() if v is not None}
  with open(tmp / "generation_config.json", "w") as f:
    json.dump(dict(generation, _from_model_config=True), f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(str(tmp))


