"""diffusers model folders (the model hub's DDPM checkpoints) <-> gen_jax networks and schedules.

  model = load("ddpm-cifar10-32")     # a folder: UNet2DModel weights + its scheduler config
  model.net, model.params             # DiffusersUNet and its Flax parameters
  model.diffusion                     # the config.diffusion fields of its scheduler
  check_weights("ddpm-cifar10-32")    # whole weights that fit config.json, from the header alone
  save(out_dir, spec, params, diffusion=..., null_label=None)  # the other way

The folder layouts diffusers writes are all read: a pipeline folder
(model_index.json, unet/, scheduler/), a UNet2DModel folder (config.json
and weights, with scheduler_config.json beside it or in ../scheduler/), as
the hub's google/ddpm-* repositories hold them. Weights are read from
diffusion_pytorch_model.safetensors with the `safetensors` package into
numpy (no torch); a .bin file needs torch. Nothing is downloaded: a hub id
gets a message saying how to fetch the folder.

The scheduler config maps onto gen_jax's `config.diffusion` (models.
diffusion_config): beta_schedule "linear" (beta_start, beta_end) or
"squaredcos_cap_v2" (gen_jax's "cosine", the same betas), num_train_timesteps,
prediction_type epsilon / sample / v_prediction (eps / x0 / v),
variance_type fixed_small[_log] / fixed_large[_log] (small / large),
clip_sample (with clip_sample_range 1), rescale_betas_zero_snr. What gen_jax
cannot represent (scaled_linear or sigmoid betas, trained_betas, learned
variances, thresholding, another clip range) is refused by name. Keys that
only choose diffusers' own inference grid (timestep_spacing, steps_offset,
set_alpha_to_one, ...) do not change gen_jax's samplers, which take their
grids as arguments; `inference_fields` keeps them, so an export writes them
back. diffusers builds its betas in float32 (torch.linspace), gen_jax
in float64: the schedules agree to float32 rounding (about 1e-7 relative).

Longer than the house's ~400 lines: reading, checking and writing a diffusers folder (weights,
scheduler config, gen_jax.json) in one place, so each refusal names the file it concerns.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from gen_jax.configs import ConfigError
from gen_jax.pretrained import diffusers_unet
from gen_jax.pretrained.diffusers_unet import (
  DiffusersUNet,
  UNet2DSpec,
  UnsupportedConfigError,
  params_from_state_dict,
  state_dict_from_params,
)
from gen_jax.runtime import fileio

CONFIG = "config.json"
# The diffusers release whose folder format `save` writes when diffusers is not installed (the
# one the round trip is tested against); with diffusers installed, its own version is written.
DIFFUSERS_FORMAT_VERSION = "0.42.1"
_DOWNLOAD_AGAIN = "download the folder again (huggingface-cli download REPO --local-dir DIR)"
SAFETENSORS = "diffusion_pytorch_model.safetensors"
TORCH_BIN = "diffusion_pytorch_model.bin"
SCHEDULER_CONFIG = "scheduler_config.json"
# Written by `save` beside config.json: which class row is the null class of classifier-free
# guidance (diffusers has no such field; a checkpoint without it is treated as having none).
GEN_JAX_FILE = "gen_jax.json"


class PretrainedError(ConfigError):
  """A folder that cannot be loaded or written as asked; one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A loaded UNet2DModel folder.

  spec: its config; params: Flax parameters of `net`; null_label: the class
  row meaning "no class", or None; diffusion: the config.diffusion fields of
  its scheduler (None if the folder has no scheduler config); unet_dir and
  scheduler_path: where they were read.
  """

  spec: UNet2DSpec
  params: Any
  null_label: int | None
  diffusion: dict | None
  unet_dir: str
  scheduler_path: str | None

  @property
  def net(self) -> DiffusersUNet:
    return DiffusersUNet(self.spec, self.null_label)

  @property
  def num_classes(self) -> int:
    """K of gen_jax's class-conditional models: the rows without the null row."""
    n = self.spec.num_class_embeds or 0
    return n - 1 if self.null_label is not None else n

  @property
  def image_shape(self) -> tuple[int, int, int]:
    height, width = self.spec.sample_size
    return (height, width, self.spec.in_channels)


def find_unet_dir(path: str) -> str:
  """The folder holding the UNet2DModel's config.json: `path` or `path`/unet."""
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/"))
    hint = (
      f"; nothing is downloaded here: on a machine with internet run `huggingface-cli download "
      f"{path} --local-dir DIR`, then pass that DIR"
      if looks_like_hub_id
      else ""
    )
    raise PretrainedError(f"pretrained={path}: no such folder{hint}")
  for candidate in (path, os.path.join(path, "unet")):
    config_path = os.path.join(candidate, CONFIG)
    if os.path.isfile(config_path):
      if _read_json(config_path, "config").get("_class_name", "UNet2DModel") == "UNet2DModel":
        return candidate
  raise PretrainedError(
    f"pretrained={path}: neither {path}/{CONFIG} nor {path}/unet/{CONFIG} is a UNet2DModel "
    "config; pass a diffusers UNet2DModel or DDPMPipeline folder (downloaded with "
    "`huggingface-cli download REPO --local-dir DIR`)"
  )


def find_scheduler_config(unet_dir: str) -> str | None:
  """scheduler_config.json beside the UNet, in its scheduler/ sibling or child, or None."""
  parent = os.path.dirname(os.path.abspath(unet_dir))
  for candidate in (
    os.path.join(unet_dir, SCHEDULER_CONFIG),
    os.path.join(unet_dir, "scheduler", SCHEDULER_CONFIG),
    os.path.join(parent, "scheduler", SCHEDULER_CONFIG),
  ):
    if os.path.isfile(candidate):
      return candidate
  return None


def read_state_dict(unet_dir: str) -> dict[str, np.ndarray]:
  """diffusers' tensors as numpy arrays: the .safetensors file (no torch), else the .bin (torch)."""
  safetensors_path = os.path.join(unet_dir, SAFETENSORS)
  bin_path = os.path.join(unet_dir, TORCH_BIN)
  if os.path.isfile(safetensors_path):
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise PretrainedError(
        "reading .safetensors weights needs the `safetensors` package: pip install safetensors "
        "(or pip install 'gen_jax[pretrained]')"
      ) from None
    try:
      return load_file(safetensors_path)
    except Exception as e:  # safetensors' SafetensorError is no ValueError or OSError
      raise _damaged(safetensors_path, e) from None
  if os.path.isfile(bin_path):
    try:
      import torch
    except ImportError:
      raise PretrainedError(
        f"{bin_path} is a PyTorch pickle and torch is not installed: pip install torch, or convert "
        f"it to {SAFETENSORS} on a machine with torch (diffusers: UNet2DModel.from_pretrained(DIR)"
        ".save_pretrained(DIR, safe_serialization=True))"
      ) from None
    try:
      state = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle's, zipfile's and its own errors
      raise _damaged(bin_path, e) from None
    return {k: v.float().numpy() for k, v in state.items()}
  raise PretrainedError(
    f"{unet_dir} holds no weights ({SAFETENSORS} or {TORCH_BIN}); download the whole folder "
    "with `huggingface-cli download REPO --local-dir DIR`"
  )


def read_state_shapes(unet_dir: str) -> dict[str, tuple]:
  """The tensors' names and (torch) shapes, from the .safetensors header alone (no weights read),
  or from the .bin file (read whole: a pickle has no header); PretrainedError if the file is
  missing, damaged or cut short (an interrupted download)."""
  safetensors_path = os.path.join(unet_dir, SAFETENSORS)
  if not os.path.isfile(safetensors_path):
    return {k: v.shape for k, v in read_state_dict(unet_dir).items()}
  try:
    from safetensors import safe_open
  except ImportError:
    return {k: v.shape for k, v in read_state_dict(unet_dir).items()}  # (says what to install)
  try:  # safe_open checks that the file holds every byte its header promises
    with safe_open(safetensors_path, "numpy") as f:
      return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  except Exception as e:  # SafetensorError, OSError
    raise _damaged(safetensors_path, e) from None


def check_weights(path: str) -> None:
  """Raises PretrainedError, naming the file, unless the folder's weights can be read and fit its
  config.json: what a run checks before it writes anything (reads no weights from .safetensors)."""
  spec, null_label = load_spec(path)
  unet_dir = find_unet_dir(path)
  try:
    diffusers_unet.check_state_shapes(spec, read_state_shapes(unet_dir), null_label)
  except PretrainedError:
    raise
  except ValueError as e:
    raise PretrainedError(f"pretrained={path}: {e}") from None


def _damaged(path: str, error: Exception) -> PretrainedError:
  reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return PretrainedError(
    f"{path} cannot be read ({reason}): it is damaged or incomplete (an interrupted "
    f"download?); {_DOWNLOAD_AGAIN}"
  )


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise PretrainedError(
      f"cannot read the {what} {path} ({e}): {_DOWNLOAD_AGAIN}, or fix the file"
    ) from None
  if not isinstance(value, dict):
    raise PretrainedError(f"the {what} {path} is not a JSON object: {_DOWNLOAD_AGAIN}")
  return value


def load_spec(path: str) -> tuple[UNet2DSpec, int | None]:
  """(spec, null_label) of the UNet2DModel in folder `path`, without reading its weights."""
  unet_dir = find_unet_dir(path)
  config = _read_json(os.path.join(unet_dir, CONFIG), "UNet2DModel config")
  try:
    spec = UNet2DSpec.from_config(config)
  except UnsupportedConfigError as e:
    raise PretrainedError(f"pretrained={path}: {e}") from None
  if spec.out_channels != spec.in_channels:
    raise PretrainedError(
      f"pretrained={path}: out_channels={spec.out_channels} but in_channels={spec.in_channels} "
      f"in {os.path.join(unet_dir, CONFIG)}; gen_jax's samplers need an output of the image's "
      "shape (a network that also predicts its variance, e.g. out_channels = 2 x in_channels, "
      "is not supported)"
    )
  null_label = None
  extra_path = os.path.join(unet_dir, GEN_JAX_FILE)
  if os.path.isfile(extra_path):
    null_label = _read_json(extra_path, "gen_jax metadata").get("null_label")
    rows = spec.num_class_embeds or 0
    valid = isinstance(null_label, int) and not isinstance(null_label, bool)
    if null_label is not None and not (valid and 0 <= null_label < rows):
      raise PretrainedError(
        f"{extra_path}: null_label={null_label!r} must be a class row of the network, an "
        f"integer in [0, {rows}) (num_class_embeds={spec.num_class_embeds}), or null; fix the "
        "file or delete it (then the network has no null class)"
      )
  return spec, null_label


def load(path: str, scheduler_config: str | None = None) -> Pretrained:
  """Loads a diffusers UNet2DModel (or DDPMPipeline) folder; PretrainedError says what is wrong.

  scheduler_config: a scheduler_config.json to use instead of the one found
  beside the model (`find_scheduler_config`).
  """
  spec, null_label = load_spec(path)
  unet_dir = find_unet_dir(path)
  try:
    params = params_from_state_dict(spec, read_state_dict(unet_dir), null_label)
  except ValueError as e:
    if isinstance(e, PretrainedError):
      raise
    raise PretrainedError(f"pretrained={path}: {e}") from None
  scheduler_path = scheduler_config or find_scheduler_config(unet_dir)
  diffusion = None
  if scheduler_path is not None:
    diffusion = diffusion_from_scheduler(read_scheduler_config(scheduler_path))
  return Pretrained(spec, params, null_label, diffusion, unet_dir, scheduler_path)


_USED_BY = (
  "only the U-Net diffusion experiments (those whose build is models.make_unet_diffusion: "
  "ddpm_digits, ddpm_mnist, ddpm_cifar) start from a diffusers folder"
)


def check_model_uses_it(config, model) -> None:
  """Raises PretrainedError if config.pretrained is set but `model` is not built around the
  folder's network (an experiment with a network of its own would ignore it silently)."""
  if config.get("pretrained") and not isinstance(getattr(model, "net", None), DiffusersUNet):
    raise PretrainedError(
      f"config.pretrained={config.pretrained} is not used by this experiment's "
      f"{type(getattr(model, 'net', model)).__name__}: {_USED_BY}"
    )


def check_can_evaluate(config) -> None:
  """Raises PretrainedError if config.pretrained is class-conditional without a null class:
  evaluation's bound and ODE likelihood need the unconditional model it does not have."""
  if not config.get("pretrained"):
    return
  spec, null_label = load_spec(config.pretrained)
  if spec.num_class_embeds and null_label is None:
    raise PretrainedError(
      f"mode=eval: config.pretrained={config.pretrained} is class-conditional without a null "
      "class, so it has no unconditional model for the likelihoods; it can sample with labels "
      "(mode=sample) and fine-tune"
    )


def check_config_can_use_it(config) -> None:
  """Raises PretrainedError if `config` has no diffusion section for the scheduler."""
  if "diffusion" not in config or "model" not in config:
    raise PretrainedError(f"this experiment has no diffusion model: {_USED_BY}")


# ----------------------------------------------------------------------------
# The scheduler config <-> config.diffusion
# ----------------------------------------------------------------------------

_VARIANCES = {
  "fixed_small": "small",
  "fixed_small_log": "small",
  "fixed_large": "large",
  "fixed_large_log": "large",
}
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# Keys that choose only diffusers' own inference grid or bookkeeping: gen_jax's samplers take
# their grids as arguments.
_INFERENCE_ONLY = (
  "timestep_spacing",
  "steps_offset",
  "set_alpha_to_one",
  "skip_prk_steps",
  "dynamic_thresholding_ratio",
  "sample_max_value",
)


def read_scheduler_config(path: str) -> dict:
  """The dict of a scheduler_config.json; PretrainedError naming the file if it is unreadable."""
  return _read_json(path, "scheduler config")


def inference_fields(scheduler: dict) -> dict:
  """The keys of a scheduler config that choose only diffusers' own inference grid
  (timestep_spacing, steps_offset, ...): gen_jax does not use them, an export writes them back."""
  return {k: scheduler[k] for k in _INFERENCE_ONLY if k in scheduler}


def diffusers_version() -> tuple[str, bool]:
  """(the `_diffusers_version` an export writes, whether diffusers is installed): the installed
  release's version, else DIFFUSERS_FORMAT_VERSION, the release whose format it follows."""
  try:
    from importlib import metadata

    return metadata.version("diffusers"), True
  except Exception:  # PackageNotFoundError, or a broken install
    return DIFFUSERS_FORMAT_VERSION, False


def diffusion_from_scheduler(scheduler: dict) -> dict:
  """The config.diffusion fields (models.diffusion_config) of a diffusers scheduler config.

  Raises PretrainedError naming a field gen_jax cannot represent.
  """

  def refuse(key, why):
    raise PretrainedError(f"scheduler config {key}={scheduler.get(key)!r}: {why}")

  known = {
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "thresholding",
    "rescale_betas_zero_snr",
    *_INFERENCE_ONLY,
  }
  unknown = sorted(k for k in scheduler if not k.startswith("_") and k not in known)
  if unknown:
    raise PretrainedError(f"scheduler config: unsupported field(s) {', '.join(unknown)}")
  out = {"num_timesteps": int(scheduler.get("num_train_timesteps", 1000))}
  if scheduler.get("trained_betas") is not None:
    refuse("trained_betas", "explicit betas are not supported; use beta_schedule")
  schedule = scheduler.get("beta_schedule", "linear")
  if schedule == "linear":
    out.update(
      beta_schedule="linear",
      beta_start=float(scheduler.get("beta_start", 1e-4)),
      beta_end=float(scheduler.get("beta_end", 0.02)),
    )
  elif schedule == "squaredcos_cap_v2":
    out.update(beta_schedule="cosine", beta_start=None, beta_end=None)
  else:
    refuse("beta_schedule", "gen_jax supports 'linear' and 'squaredcos_cap_v2' (cosine)")
  variance = scheduler.get("variance_type", "fixed_small")
  if variance not in _VARIANCES:
    refuse("variance_type", f"supported: {', '.join(_VARIANCES)} (learned variances are not)")
  out["variance"] = _VARIANCES[variance]
  prediction = scheduler.get("prediction_type", "epsilon")
  if prediction not in _PREDICTIONS:
    refuse("prediction_type", f"supported: {', '.join(_PREDICTIONS)}")
  out["prediction"] = _PREDICTIONS[prediction]
  if scheduler.get("thresholding", False):
    refuse("thresholding", "dynamic thresholding is not supported")
  out["clip"] = bool(scheduler.get("clip_sample", True))
  if out["clip"] and float(scheduler.get("clip_sample_range", 1.0)) != 1.0:
    refuse("clip_sample_range", "gen_jax clips x0 to [-1, 1] only")
  out["zero_terminal_snr"] = bool(scheduler.get("rescale_betas_zero_snr", False))
  return out


def scheduler_from_diffusion(diffusion: dict) -> dict:
  """The DDPMScheduler config of config.diffusion fields (the inverse of
  `diffusion_from_scheduler`); beta_start/beta_end None (improved-diffusion's
  scaling with T) are written as their values."""
  from gen_jax.diffusion import linear_betas

  out = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": diffusion["num_timesteps"],
    "variance_type": {"small": "fixed_small", "large": "fixed_large"}[diffusion["variance"]],
    "prediction_type": {v: k for k, v in _PREDICTIONS.items()}[diffusion["prediction"]],
    "clip_sample": bool(diffusion["clip"]),
    "clip_sample_range": 1.0,
    "rescale_betas_zero_snr": bool(diffusion.get("zero_terminal_snr", False)),
    "trained_betas": None,
  }
  if diffusion["beta_schedule"] == "cosine":
    out["beta_schedule"] = "squaredcos_cap_v2"
  else:
    betas = linear_betas(diffusion["num_timesteps"], diffusion["beta_start"], diffusion["beta_end"])
    out.update(beta_schedule="linear", beta_start=float(betas[0]), beta_end=float(betas[-1]))
  return out


# ----------------------------------------------------------------------------
# Writing a folder
# ----------------------------------------------------------------------------


def save(
  out_dir: str,
  spec: UNet2DSpec,
  params,
  *,
  diffusion: dict,
  null_label: int | None = None,
  scheduler_extras: dict | None = None,
) -> str:
  """Writes a DDPMPipeline folder: model_index.json, unet/ (config.json, the .safetensors
  weights, gen_jax.json with the null class), scheduler/scheduler_config.json (with
  `scheduler_extras`, the source folder's `inference_fields`, if any). `_diffusers_version` is
  `diffusers_version()`'s.

  `DDPMPipeline.from_pretrained(out_dir)` and `UNet2DModel.from_pretrained(out_dir,
  subfolder="unet")` load it. Written into a temporary folder beside out_dir and renamed, so
  a kill leaves no half-written folder; an existing out_dir is refused.
  """
  try:
    from safetensors.numpy import save_file
  except ImportError:
    raise PretrainedError(
      "writing .safetensors weights needs the `safetensors` package: pip install safetensors"
    ) from None
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.exists(out_dir):
    raise PretrainedError(f"{out_dir} exists; choose a new folder for the export")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    unet_dir = os.path.join(tmp, "unet")
    os.makedirs(unet_dir)
    version, _ = diffusers_version()
    config = {**spec.to_config(), "_diffusers_version": version}
    fileio.write_atomically(os.path.join(unet_dir, CONFIG), json.dumps(config, indent=2))
    save_file(state_dict_from_params(params), os.path.join(unet_dir, SAFETENSORS))
    if null_label is not None:
      fileio.write_atomically(
        os.path.join(unet_dir, GEN_JAX_FILE), json.dumps({"null_label": null_label})
      )
    os.makedirs(os.path.join(tmp, "scheduler"))
    fileio.write_atomically(
      os.path.join(tmp, "scheduler", SCHEDULER_CONFIG),
      json.dumps(
        {
          **scheduler_from_diffusion(diffusion),
          **inference_fields(scheduler_extras or {}),
          "_diffusers_version": version,
        },
        indent=2,
      ),
    )
    index = {
      "_class_name": "DDPMPipeline",
      "_diffusers_version": version,
      "scheduler": ["diffusers", "DDPMScheduler"],
      "unet": ["diffusers", "UNet2DModel"],
    }
    fileio.write_atomically(os.path.join(tmp, "model_index.json"), json.dumps(index, indent=2))
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir
