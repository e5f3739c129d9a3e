"""diffusers UNet2DModel checkpoints in gen_jax (gen_jax.pretrained.diffusers_unet, gen_jax.pretrained): the forward
pass against diffusers' own on the same random weights, the weight and scheduler mappings, export and
re-import, the error messages, and run.py --pretrained end to end.

The peer tests need torch and diffusers (the `peers` extra) and skip without them; the hub is never reached:
the peer models are built with random weights here and saved with `save_pretrained`.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import models, nets, pretrained
from gen_jax.configs import ConfigError
from gen_jax.pretrained import diffusers_unet
from gen_jax.pretrained.diffusers_unet import DiffusersUNet, UNet2DSpec
from gen_jax.train import workdir as workdir_lib
from tests.support import runs

pytestmark = pytest.mark.usefixtures("fast_compile")

# The released DDPM models' configs (the hub's config.json files, minus diffusers' metadata).
CIFAR10_32 = dict(
  sample_size=32,
  in_channels=3,
  out_channels=3,
  block_out_channels=(128, 256, 256, 256),
  layers_per_block=2,
  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
  attention_head_dim=None,
  norm_num_groups=32,
  norm_eps=1e-6,
  freq_shift=1,
  flip_sin_to_cos=False,
  downsample_padding=0,
  mid_block_scale_factor=1,
  center_input_sample=False,
  time_embedding_type="positional",
  act_fn="silu",
)
# The cifar10 network fed 8x8 images: sample_size sizes no layer (three downsamplings, 8 -> 1; the attention sits
# in the second block at any size), so the network is the same one, at 1/16 of the cost.
CIFAR10_AT_8 = dict(CIFAR10_32, sample_size=8)
# google/ddpm-ema-church-256, built at sample_size 32: sample_size sizes no layer (the attention sits in the
# fifth block at any size), so the network is the same one, at 1/64 of the cost.
CHURCH_256 = dict(
  CIFAR10_32,
  block_out_channels=(128, 128, 256, 256, 512, 512),
  down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)
# Small configs that between them take every supported option off its DDPM value.
TINY = dict(
  sample_size=8,
  in_channels=1,
  out_channels=1,
  block_out_channels=(8, 16),
  layers_per_block=1,
  down_block_types=("AttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "AttnUpBlock2D"),
  norm_num_groups=4,
  attention_head_dim=None,
  norm_eps=1e-6,
  freq_shift=1,
  flip_sin_to_cos=False,
  downsample_padding=0,
)
TINY_VARIANTS = {
  "heads_scale_shift_padding": dict(
    TINY,
    attention_head_dim=4,
    resnet_time_scale_shift="scale_shift",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    norm_eps=1e-5,
  ),
  "classes_rect_channels": dict(
    TINY,
    sample_size=(8, 12),
    in_channels=3,
    out_channels=6,
    block_out_channels=(8, 12, 16),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    num_class_embeds=5,
    mid_block_scale_factor=2.0,
    attn_norm_num_groups=2,
    time_embedding_dim=24,
    center_input_sample=True,
  ),
  "no_mid_attention": dict(TINY, add_attention=False, resnet_time_scale_shift="scale_shift"),
  "no_mid_block": dict(TINY, mid_block_type=None, norm_num_groups=2),
}


def _peer_model(config, seed=0):
  """A diffusers UNet2DModel with every parameter random (its zero-initialised ones too), in eval mode."""
  torch = pytest.importorskip("torch")
  unet_2d = pytest.importorskip("diffusers.models.unets.unet_2d")
  with torch.device("meta"):  # no default initialisation: 15 s for the church model here
    model = unet_2d.UNet2DModel(**config)
  model = model.to_empty(device="cpu").eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2 / max(1, p[0].numel()) ** 0.5, generator=generator)
  return model


def _peer_forward(model, x_nhwc, t, labels=None):
  import torch

  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    labels = None if labels is None else torch.from_numpy(labels)
    out = model(x, torch.from_numpy(t), class_labels=labels).sample.numpy()
  return out.transpose(0, 2, 3, 1)


def _inputs(spec, batch, seed=0):
  rng = np.random.default_rng(seed)
  height, width = spec.sample_size
  return rng.standard_normal((batch, height, width, spec.in_channels)).astype(np.float32)


def _random_params(abstract, seed=0, scale=0.3):
  """Gaussian values of the shapes of `abstract` (jax.eval_shape of an init): random everywhere (the
  native init zeroes the output layers), and no init to compile."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), abstract)


def _relative_error(a, b) -> float:
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _check_forward(config, t, batch=None, labels=None):
  """Max relative error of gen_jax's forward against diffusers' on the same random weights."""
  model = _peer_model(config)
  spec = UNet2DSpec.from_config(dict(model.config))
  params = diffusers_unet.params_from_state_dict(
    spec, {k: v.numpy() for k, v in model.state_dict().items()}
  )
  t = np.asarray(t, np.int64)
  x = _inputs(spec, len(t))
  ref = _peer_forward(model, x, t, labels)
  apply = jax.jit(DiffusersUNet(spec).apply)
  out = np.asarray(apply(params, x, t, None if labels is None else jnp.asarray(labels)))
  return _relative_error(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_32", "church_256"])
def test_released_configs_match_diffusers(name):
  config = {"cifar10_32": CIFAR10_AT_8, "church_256": CHURCH_256}[name]
  error = _check_forward(config, t=[0, 500, 999])
  assert error < 1e-5, error


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_VARIANTS))
def test_small_configs_match_diffusers(name):
  config = TINY_VARIANTS[name]
  labels = np.array([0, 4, 2], np.int64) if config.get("num_class_embeds") else None
  error = _check_forward(config, t=[0, 37, 999], labels=labels)
  assert error < 1e-5, error


def test_parameter_count_of_the_cifar10_model_is_the_papers():
  spec = UNet2DSpec.from_config(CIFAR10_32)
  count = sum(x.size for x in jax.tree.leaves(diffusers_unet.abstract_params(spec)))
  native = models.make_unet_diffusion(runs.config("ddpm_cifar"), (32, 32, 3))
  native_count = sum(
    x.size for x in jax.tree.leaves(jax.eval_shape(native.init, jax.random.key(0)))
  )
  assert count == native_count == 35_746_307


# ----------------------------------------------------------------------------------------------------------------
# Config and weight mappings (no torch)


@pytest.mark.parametrize(
  ("field", "value"),
  [
    ("resnet_time_scale_shift", "spatial"),
    ("time_embedding_type", "fourier"),
    ("act_fn", "gelu"),
    ("class_embed_type", "timestep"),
    ("downsample_type", "resnet"),
    ("down_block_types", ("CrossAttnDownBlock2D", "DownBlock2D")),
    ("up_block_types", ("UpBlock2D", "SkipUpBlock2D")),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("upsample_type", "fir"),
    ("norm_num_groups", None),
  ],
)
def test_unsupported_unet_options_are_refused_by_name(field, value):
  with pytest.raises(diffusers_unet.UnsupportedConfigError, match=field):
    UNet2DSpec.from_config({**TINY, field: value})


@pytest.mark.parametrize(("flip", "shift", "dim"), [(False, 1, 8), (True, 0, 8), (True, 1, 7)])
def test_timestep_features_are_diffusers_formula(flip, shift, dim):
  """float64 numpy: f_i = 10000^(-i / (dim//2 - shift)), [sin, cos] (flipped: [cos, sin]), odd dim 0-padded."""
  t = np.array([0.0, 1.0, 37.0, 999.0])
  half = dim // 2
  args = t[:, None] * 10000.0 ** (-np.arange(half) / (half - shift))[None, :]
  parts = [np.cos(args), np.sin(args)] if flip else [np.sin(args), np.cos(args)]
  want = np.concatenate([*parts, np.zeros((len(t), dim % 2))], axis=1)
  got = diffusers_unet.timestep_features(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)  # float32 phases up to 999 rad
  # The native U-Net's embedding is the flip=False, shift=1 case.
  if not flip and shift == 1:
    np.testing.assert_allclose(
      np.asarray(nets.timestep_embedding(t, dim)), np.asarray(got), atol=1e-6
    )


def test_keys_diffusers_ignores_are_ignored():
  # UNet2DModel takes no cross_attention_dim: diffusers' from_config drops it, and so does the spec.
  assert UNet2DSpec.from_config({**TINY, "cross_attention_dim": 32}) == UNet2DSpec.from_config(TINY)


def test_sample_size_must_survive_the_downsamplings():
  with pytest.raises(diffusers_unet.UnsupportedConfigError, match="sample_size"):
    UNet2DSpec.from_config({**TINY, "sample_size": 7})


def test_spec_round_trips_through_its_config():
  for config in (CIFAR10_32, *TINY_VARIANTS.values()):
    spec = UNet2DSpec.from_config(config)
    assert UNet2DSpec.from_config(json.loads(json.dumps(spec.to_config()))) == spec


def test_weights_round_trip_and_name_what_does_not_fit():
  spec = UNet2DSpec.from_config(TINY_VARIANTS["classes_rect_channels"])
  params = _random_params(diffusers_unet.abstract_params(spec))
  state = diffusers_unet.state_dict_from_params(params)
  assert state["conv_in.weight"].shape == (8, 3, 3, 3)  # torch's OIHW
  assert state["down_blocks.1.attentions.0.to_q.weight"].shape == (12, 12)
  back = diffusers_unet.params_from_state_dict(spec, state)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))

  # Checkpoints saved before diffusers 0.14 name the attention layers query/key/value/proj_attn.
  old = {
    k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value"): v
    for k, v in state.items()
  }
  old = {k.replace("to_out.0", "proj_attn"): v for k, v in old.items()}
  assert any(".query." in k for k in old)
  back = diffusers_unet.params_from_state_dict(spec, old)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))

  broken = dict(state, extra=np.zeros(3, np.float32))
  del broken["conv_out.bias"]
  broken["conv_in.weight"] = np.zeros((8, 3, 1, 1), np.float32)
  with pytest.raises(
    ValueError, match=r"missing tensors: conv_out\.bias.*unexpected tensors: extra"
  ):
    diffusers_unet.params_from_state_dict(spec, broken)


@pytest.mark.slow  # over 0.5 s: a run.py start-up or U-Net compilations
def test_native_unet_maps_exactly_onto_unet2dmodel():
  """gen_jax's U-Net (class-conditional, two levels, attention at 4x4) as a DiffusersUNet: same outputs."""
  unet = nets.UNet(
    ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, num_classes=3
  )
  x = _inputs(UNet2DSpec(sample_size=(8, 8), in_channels=1), 2)
  t, labels = jnp.array([0, 17]), jnp.array([2, 3])  # 3: the null class
  params = _random_params(jax.eval_shape(unet.init, jax.random.key(0), x, t, labels))
  spec, mapped, null_label = diffusers_unet.from_native_unet(unet, params, (8, 8, 1))
  assert null_label == 3 and spec.num_class_embeds == 4
  assert spec.down_block_types == ("DownBlock2D", "AttnDownBlock2D")
  assert spec.up_block_types == ("AttnUpBlock2D", "UpBlock2D")
  ref = jax.jit(unet.apply)(params, x, t, labels)
  out = jax.jit(DiffusersUNet(spec, null_label).apply)(mapped, x, t, labels)
  assert _relative_error(np.asarray(out), np.asarray(ref)) < 1e-6

  with pytest.raises(ValueError, match="odd size"):
    diffusers_unet.from_native_unet(unet, params, (6, 5, 1))


# ----------------------------------------------------------------------------------------------------------------
# The scheduler config


DDPM_CIFAR_SCHEDULER = {
  "_class_name": "DDPMScheduler",
  "_diffusers_version": "0.1.1",
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "beta_start": 0.0001,
  "clip_sample": True,
  "num_train_timesteps": 1000,
  "trained_betas": None,
  "variance_type": "fixed_small",
}


def test_scheduler_config_maps_every_supported_field():
  assert pretrained.diffusion_from_scheduler(DDPM_CIFAR_SCHEDULER) == {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "variance": "small",
    "prediction": "eps",
    "clip": True,
    "zero_terminal_snr": False,
  }
  other = {
    "num_train_timesteps": 250,
    "beta_schedule": "squaredcos_cap_v2",
    "variance_type": "fixed_large_log",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "clip_sample_range": 3.0,  # unused without clipping
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",  # diffusers' inference grid: ignored
    "steps_offset": 1,
    "thresholding": False,
  }
  assert pretrained.diffusion_from_scheduler(other) == {
    "num_timesteps": 250,
    "beta_schedule": "cosine",
    "beta_start": None,
    "beta_end": None,
    "variance": "large",
    "prediction": "v",
    "clip": False,
    "zero_terminal_snr": True,
  }
  assert pretrained.diffusion_from_scheduler({"prediction_type": "sample"})["prediction"] == "x0"
  for diffusion in (pretrained.diffusion_from_scheduler(c) for c in (DDPM_CIFAR_SCHEDULER, other)):
    back = pretrained.diffusion_from_scheduler(pretrained.scheduler_from_diffusion(diffusion))
    assert back == diffusion


@pytest.mark.parametrize(
  ("field", "value"),
  [
    ("beta_schedule", "sigmoid"),
    ("beta_schedule", "scaled_linear"),
    ("trained_betas", [0.1, 0.2]),
    ("variance_type", "learned_range"),
    ("prediction_type", "flow"),
    ("thresholding", True),
    ("clip_sample_range", 2.0),
    ("use_karras_sigmas", True),
  ],
)
def test_scheduler_fields_gen_jax_cannot_represent_are_refused_by_name(field, value):
  with pytest.raises(pretrained.PretrainedError, match=field):
    pretrained.diffusion_from_scheduler({**DDPM_CIFAR_SCHEDULER, field: value})


@pytest.mark.slow
def test_schedules_match_diffusers_ddpm_scheduler():
  """The mapped betas against DDPMScheduler's own (float32 in diffusers)."""
  scheduling_ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
  for config in (
    DDPM_CIFAR_SCHEDULER,
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 100},
  ):
    fields = pretrained.diffusion_from_scheduler(config)
    ours = models.diffusion_betas(models.diffusion_config(**fields))
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    theirs = scheduling_ddpm.DDPMScheduler(**kwargs).betas.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-6)


# ----------------------------------------------------------------------------------------------------------------
# Folders: errors, .bin, export


def test_folder_errors_say_what_to_do(tmp_path, monkeypatch):
  with pytest.raises(
    pretrained.PretrainedError, match="huggingface-cli download google/ddpm-cifar10-32"
  ):
    pretrained.load("google/ddpm-cifar10-32")
  folder = tmp_path / "model"
  folder.mkdir()
  with pytest.raises(pretrained.PretrainedError, match="UNet2DModel config"):
    pretrained.load(str(folder))
  (folder / "config.json").write_text(json.dumps(TINY))
  with pytest.raises(pretrained.PretrainedError, match="holds no weights"):
    pretrained.load(str(folder))
  (folder / "diffusion_pytorch_model.bin").write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(pretrained.PretrainedError, match="torch is not installed.*safetensors"):
    pretrained.load(str(folder))


@pytest.mark.slow
def test_bin_weights_load_with_torch(tmp_path):
  model = _peer_model(TINY)
  model.save_pretrained(tmp_path / "bin", safe_serialization=False)
  model.save_pretrained(tmp_path / "safetensors")
  from_bin = pretrained.load(str(tmp_path / "bin"))
  from_safetensors = pretrained.load(str(tmp_path / "safetensors"))
  assert from_bin.diffusion is None  # no scheduler config beside it
  assert jax.tree.all(jax.tree.map(np.array_equal, from_bin.params, from_safetensors.params))


@pytest.mark.slow
def test_export_round_trips_through_diffusers(tmp_path):
  """A gen_jax U-Net exported as a DDPMPipeline folder: diffusers loads the same network and schedule,
  and gen_jax loads it back."""
  pytest.importorskip("torch")
  pipelines = pytest.importorskip("diffusers")

  unet = nets.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
  x, t = _inputs(UNet2DSpec(sample_size=(8, 8), in_channels=1), 2), np.array([3, 998])
  params = _random_params(jax.eval_shape(unet.init, jax.random.key(0), x, t), scale=0.1)
  spec, mapped, null_label = diffusers_unet.from_native_unet(unet, params, (8, 8, 1))
  diffusion = dict(models.diffusion_config(num_timesteps=50, variance="large"))
  folder = pretrained.save(
    str(tmp_path / "export"), spec, mapped, diffusion=diffusion, null_label=null_label
  )
  with pytest.raises(pretrained.PretrainedError, match="exists"):
    pretrained.save(folder, spec, mapped, diffusion=diffusion)

  pipeline = pipelines.DDPMPipeline.from_pretrained(folder)
  ref = np.asarray(jax.jit(unet.apply)(params, x, t))
  assert _relative_error(_peer_forward(pipeline.unet.eval(), x, t), ref) < 1e-5
  scheduler = pipeline.scheduler.config
  assert (scheduler.num_train_timesteps, scheduler.variance_type) == (50, "fixed_large")
  np.testing.assert_allclose(
    pipeline.scheduler.alphas_cumprod.numpy(),
    np.cumprod(1 - models.diffusion_betas(models.diffusion_config(num_timesteps=50))),
    rtol=1e-6,
  )
  loaded = pretrained.load(folder)
  assert loaded.diffusion == pretrained.diffusion_from_scheduler(dict(scheduler))
  assert _relative_error(np.asarray(jax.jit(loaded.net.apply)(loaded.params, x, t)), ref) < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# run.py --pretrained end to end

env = runs.env_fixture()
DIGITS_FLAGS = runs.flags(
  "ddpm_digits",
  runs.TWO_STEPS,
  {"train.num_steps": 3, "train.checkpoint_every": 3, "train.sample_every": 3},
  {"eval.num_samples": 0, "eval.ode_steps": 2, "eval.num_examples": 8},
)


@pytest.mark.slow
def test_run_py_samples_evaluates_finetunes_and_exports_a_diffusers_folder(env, tmp_path):
  """A random 8x8x1 UNet2DModel + DDPMScheduler folder through run.py: sample, eval (bound and ODE), train
  (fine-tuning with EMA from the folder's weights, a checkpoint), then export, which diffusers loads."""
  scheduling_ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
  from diffusers import UNet2DModel

  folder = tmp_path / "tiny-ddpm"
  model = _peer_model(TINY)
  model.save_pretrained(folder / "unet")
  scheduling_ddpm.DDPMScheduler(
    num_train_timesteps=20,
    beta_schedule="squaredcos_cap_v2",
    timestep_spacing="trailing",
    steps_offset=1,
  ).save_pretrained(folder / "scheduler")
  cwd, workdir = str(tmp_path), str(tmp_path / "imported")

  result = runs.run_py(
    env, cwd, *DIGITS_FLAGS, f"--pretrained={folder}", f"--workdir={workdir}", "--mode=sample"
  )
  assert "Imported" in result.stdout
  assert f"Schedule of {folder}: cosine betas, T=20, eps-prediction" in result.stdout
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["pretrained"] == str(folder) and saved["diffusion"]["num_timesteps"] == 20
  with np.load(os.path.join(workdir, "samples.npz")) as f:
    assert f["images"].shape == (4, 8, 8, 1)

  runs.run_py(
    env, cwd, *DIGITS_FLAGS, f"--workdir={workdir}", "--mode=eval"
  )  # no --pretrained needed
  with open(os.path.join(workdir, "eval.json")) as f:
    likelihood = json.load(f)["likelihood"]
  assert np.isfinite(likelihood["bits_per_dim"]) and np.isfinite(likelihood["ode_bits_per_dim"])

  finetuned = str(tmp_path / "finetuned")
  runs.run_py(env, cwd, *DIGITS_FLAGS, f"--pretrained={folder}", f"--workdir={finetuned}")
  assert os.listdir(os.path.join(finetuned, "checkpoints")) == ["3"]

  # The export script, in process, and the export read by diffusers.
  export = str(tmp_path / "export")
  assert (
    runs.load_script("scripts/export_diffusers.py").main(
      ["--experiment=ddpm_digits", f"--workdir={finetuned}", f"--out={export}"]
    )
    == 0
  )
  config = workdir_lib.with_saved_config(runs.config("ddpm_digits"), finetuned)
  # The source's inference grid and the installed diffusers' version go into the export.
  import diffusers

  with open(os.path.join(export, "scheduler", "scheduler_config.json")) as f:
    scheduler = json.load(f)
  assert (scheduler["timestep_spacing"], scheduler["steps_offset"]) == ("trailing", 1)
  assert scheduler["_diffusers_version"] == diffusers.__version__
  exported = UNet2DModel.from_pretrained(export, subfolder="unet").state_dict()
  # Fine-tuned from the folder's weights: 3 Adam steps move each weight by at most about 3 lr.
  moved = max(float((exported[k] - v).abs().max()) for k, v in model.state_dict().items())
  assert 0 < moved <= 3.5 * config.optim.learning_rate, moved


def test_experiments_with_a_network_of_their_own_refuse_a_folder(tmp_path):
  """ddpm_toy2d's MLP, a VAE, mle_toy: config.pretrained would be ignored, so it is refused."""
  from gen_jax.train import from_pretrained

  folder = _folder(tmp_path)
  toy2d = runs.config("ddpm_toy2d")
  config = from_pretrained.use_pretrained(toy2d, str(folder))
  model = runs.load_script("experiments/ddpm_toy2d.py").build(config, (2,))
  with pytest.raises(pretrained.PretrainedError, match="not used by this experiment's MLPDenoiser"):
    pretrained.check_model_uses_it(config, model)
  # A scheduler config given explicitly wins over the folder's.
  (tmp_path / "scheduler.json").write_text(json.dumps({"num_train_timesteps": 40}))
  digits = from_pretrained.use_pretrained(
    runs.config("ddpm_digits"), str(folder), scheduler_config=str(tmp_path / "scheduler.json")
  )
  assert (digits.pretrained, digits.diffusion.num_timesteps) == (str(folder), 40)
  for name in ("vae_digits", "mle_toy"):
    with pytest.raises(pretrained.PretrainedError, match="no diffusion model"):
      from_pretrained.use_pretrained(runs.config(name), str(folder))


def test_a_workdir_of_one_folder_refuses_another(tmp_path):
  from gen_jax.train import from_pretrained

  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "0").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"pretrained": "/models/a"}))
  config = runs.config("ddpm_digits")
  config.pretrained = "/models/b"
  with pytest.raises(ConfigError, match="pretrained=/models/a, not"):
    from_pretrained.import_pretrained(config, str(workdir), models.make_unet_diffusion)


# ----------------------------------------------------------------------------------------------------------------
# Start-up checks: a folder that cannot be run is refused in one line before anything is written (issue 27
# item 7, issue 26 "Pretrained")


def _folder(tmp_path, name="tiny", null_label=None, num_timesteps=20, **overrides):
  """A DDPMPipeline folder of a random TINY network (8x8x1, ddpm_digits' images) written by gen_jax's own
  `save` (no torch): unet/ with config.json and weights, scheduler/ with a cosine T=20 DDPMScheduler."""
  spec = UNet2DSpec.from_config({**TINY, **overrides})
  params = _random_params(diffusers_unet.abstract_params(spec, null_label))
  diffusion = dict(
    models.diffusion_config(num_timesteps=num_timesteps, beta_schedule="cosine", prediction="v")
  )
  return pretrained.save(
    str(tmp_path / name), spec, params, diffusion=diffusion, null_label=null_label
  )


def _run_py_fails(env, tmp_path, *args):
  """run.py's ddpm_digits with `args`, which must fail at start-up: (the one stderr line, the workdir)."""
  workdir = tmp_path / "run"
  result = runs.run_py(
    env, str(tmp_path), *DIGITS_FLAGS, f"--workdir={workdir}", *args, check=False
  )
  assert result.returncode == 1, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert not workdir.exists(), sorted(os.listdir(workdir))  # nothing half-written
  return lines[0]


@pytest.mark.slow  # over 0.5 s: a run.py start-up or U-Net compilations
def test_a_pipeline_without_its_scheduler_is_refused_not_guessed(env, tmp_path):
  """Before: the experiment's linear / eps / T=1000 schedule was taken silently for a v-prediction cosine
  T=20 network, exit 0, and written into the workdir's config.json."""
  folder = _folder(tmp_path)
  os.rename(os.path.join(folder, "scheduler"), tmp_path / "scheduler-elsewhere")
  line = _run_py_fails(env, tmp_path, f"--pretrained={folder}")
  assert "has no scheduler_config.json" in line and "pass --scheduler_config=PATH" in line, line
  # With the file named, the schedule is the file's, and one line says which it is.
  from gen_jax.train import from_pretrained

  said = []
  config = from_pretrained.use_pretrained(
    runs.config("ddpm_digits"),
    folder,
    scheduler_config=str(tmp_path / "scheduler-elsewhere" / "scheduler_config.json"),
    report=said.append,
  )
  assert (config.diffusion.num_timesteps, config.diffusion.prediction) == (20, "v")
  assert said == [
    f"Schedule of {folder}: cosine betas, T=20, v-prediction, variance small, x0 clipped (from "
    f"{tmp_path / 'scheduler-elsewhere' / 'scheduler_config.json'})"
  ]


@pytest.mark.slow  # a run.py start-up each: over 1 s
@pytest.mark.parametrize(
  "damaged", ["unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
)
def test_a_truncated_file_of_the_folder_is_one_line_and_nothing_is_written(env, tmp_path, damaged):
  """An interrupted download. Before: 29-36-line tracebacks (SafetensorError is no ValueError; a raw json.load),
  and --mode=train left .lock, an empty checkpoints/, config.json, data_spec.json and experiment.txt."""
  folder = _folder(tmp_path)
  path = os.path.join(folder, damaged)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  line = _run_py_fails(env, tmp_path, f"--pretrained={folder}")
  assert path in line and "download the folder again" in line, line


def test_a_network_whose_output_is_not_the_image_is_refused_by_name(tmp_path):
  """out_channels != in_channels (a learned-variance head): before, accepted, and lax.scan failed at the first
  sample, after a step-0 import had been written."""
  folder = _folder(tmp_path, out_channels=2)
  with pytest.raises(pretrained.PretrainedError, match=r"out_channels=2 but in_channels=1"):
    pretrained.load_spec(folder)
  from gen_jax.train import from_pretrained

  with pytest.raises(pretrained.PretrainedError, match="out_channels=2"):
    from_pretrained.use_pretrained(runs.config("ddpm_digits"), folder)


@pytest.mark.parametrize("null_label", [3, -1, 1.5, "0", True])
def test_a_null_label_outside_the_class_rows_is_refused(tmp_path, null_label):
  """gen_jax.json's null_label must be a row of num_class_embeds; before, any value was taken (3 of 3 rows
  indexed past the embedding table)."""
  folder = _folder(tmp_path, null_label=0, num_class_embeds=3)
  with open(os.path.join(folder, "unet", "gen_jax.json"), "w") as f:
    json.dump({"null_label": null_label}, f)
  with pytest.raises(pretrained.PretrainedError, match=r"gen_jax\.json: null_label=.* \[0, 3\)"):
    pretrained.load_spec(folder)


def test_weights_that_do_not_fit_are_refused_before_anything_is_written(tmp_path):
  """The tensors' shapes are checked from the .safetensors header at start-up (before: in the training's
  first restore_or_init, after the workdir was made)."""
  from gen_jax.train import from_pretrained

  folder = _folder(tmp_path)
  with open(os.path.join(folder, "unet", "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(folder, "unet", "config.json"), "w") as f:
    json.dump({**config, "block_out_channels": [8, 24]}, f)
  with pytest.raises(pretrained.PretrainedError, match=r"do not match config\.json.*wrong shape"):
    from_pretrained.use_pretrained(runs.config("ddpm_digits"), folder)


@pytest.mark.slow  # over 0.5 s: a run.py start-up or U-Net compilations
def test_model_overrides_the_folder_ignores_are_refused_naming_the_flags(env, tmp_path):
  """--config.model.dropout with --pretrained: before, silently ignored (the folder decides the network);
  and the messages said --config.pretrained=, a flag that does not exist."""
  folder = _folder(tmp_path)
  line = _run_py_fails(env, tmp_path, f"--pretrained={folder}", "--config.model.dropout=0.3")
  assert line == (
    f"error: --config.model.dropout does not apply with --pretrained={folder}: the folder's config.json "
    "decides the network (only the model fields num_classes, cond_drop_prob, compute_dtype, remat apply); "
    "drop the override"
  ), line
  line = _run_py_fails(env, tmp_path, f"--pretrained={folder}", "--config.model.remat=True")
  assert "--config.model.remat=True is not supported with --pretrained (only False)" in line, line
  assert "--config.pretrained" not in line


def test_as_flags_names_the_pretrained_flag(monkeypatch):
  monkeypatch.setenv("GEN_JAX_CPU_FLAGS", "0")  # importing run.py leaves XLA's flags alone
  run_py = runs.load_script("run.py")
  assert run_py.as_flags("config.pretrained=/m is a U-Net for 8x8x1 images") == (
    "--pretrained=/m is a U-Net for 8x8x1 images"
  )
  assert run_py.as_flags("not supported with config.pretrained (only 'float32')") == (
    "not supported with --pretrained (only 'float32')"
  )


def test_a_short_fine_tune_draws_a_grid_scaled_to_it():
  """ddpm_cifar fine-tuned for 2 steps of 128 examples: before, the experiment's 64 samples of 1000-step DDPM
  (64,000 network calls for 256 training examples, over 10 minutes at 64x64 on a CPU)."""
  from gen_jax.train import from_pretrained

  config = runs.config("ddpm_cifar", {"train.num_steps": 2})
  said = []
  scaled = from_pretrained.scale_sample_grid(config, report=said.append)
  sample = scaled.sample
  assert (sample.sampler, sample.num_steps, sample.num_samples) == ("ddim", 10, 25)
  assert sample.num_samples * sample.num_steps <= 2 * 128
  assert said and "25 samples of 10-step DDIM" in said[0] and "config.sample.*" in said[0]
  # A grid chosen on the command line, or one the run can afford, stays.
  assert from_pretrained.scale_sample_grid(config, keep={"sample.sampler"}) is config
  assert from_pretrained.scale_sample_grid(runs.config("ddpm_cifar")) is not None
  long = runs.config("ddpm_cifar", {"train.num_steps": 10_000})
  assert from_pretrained.scale_sample_grid(long) is long
  # Guidance doubles the calls per step.
  guided = runs.config("ddpm_cifar", {"train.num_steps": 100, "sample.guidance_scale": 2.0})
  sample = from_pretrained.scale_sample_grid(guided).sample
  assert 2 * sample.num_samples * sample.num_steps <= 100 * 128


@pytest.mark.slow  # over 0.5 s: a run.py start-up or U-Net compilations
def test_a_class_conditional_folder_without_a_null_class_samples_with_labels(tmp_path):
  """docs/pretrained.md: such a network samples with labels (no guidance) and fine-tunes with
  cond_drop_prob=0. Before, check_sampler traced model.sample without labels, so its training was refused."""
  from gen_jax.train import from_pretrained, run_setup

  folder = _folder(tmp_path, num_class_embeds=10)
  config = from_pretrained.use_pretrained(
    runs.config("ddpm_digits", {"model.cond_drop_prob": 0.0}), folder
  )
  model = models.make_unet_diffusion(config, (8, 8, 1))
  assert model.num_classes == 10
  params = diffusers_unet.abstract_params(model.net.spec, None)
  state = type("State", (), {"ema_params": params})
  run_setup.check_sampler(model, state, "ddim", 2, None)
  with pytest.raises(
    ConfigError, match=r"config\.sample\.guidance_scale=1\.5: .*without a null class.*set it to 0"
  ):
    run_setup.check_sampler(model, state, "ddim", 2, None, guidance_scale=1.5)


def test_export_writes_the_diffusers_version_and_the_source_inference_grid(
  tmp_path, monkeypatch, capsys
):
  """Before: "_diffusers_version": "0.42.1" whatever was installed, and the source folder's timestep_spacing /
  steps_offset dropped."""
  from importlib import metadata

  spec = UNet2DSpec.from_config(TINY)
  params = _random_params(diffusers_unet.abstract_params(spec))
  diffusion = dict(models.diffusion_config(num_timesteps=20))
  real_version = metadata.version

  def version(name):
    if name == "diffusers":
      return "9.8.7"
    return real_version(name)

  monkeypatch.setattr(metadata, "version", version)
  folder = pretrained.save(
    str(tmp_path / "a"),
    spec,
    params,
    diffusion=diffusion,
    scheduler_extras={"timestep_spacing": "trailing", "steps_offset": 1, "beta_start": 0.5},
  )
  with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
    scheduler = json.load(f)
  assert (scheduler["timestep_spacing"], scheduler["steps_offset"]) == ("trailing", 1)
  assert scheduler["beta_start"] == pytest.approx(0.005)  # only the inference-grid keys are carried
  for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
    with open(os.path.join(folder, name)) as f:
      assert json.load(f)["_diffusers_version"] == "9.8.7", name

  def missing(name):
    raise metadata.PackageNotFoundError(name)

  monkeypatch.setattr(metadata, "version", missing)
  assert pretrained.diffusers_version() == (pretrained.DIFFUSERS_FORMAT_VERSION, False)
  folder = pretrained.save(str(tmp_path / "b"), spec, params, diffusion=diffusion)
  with open(os.path.join(folder, "model_index.json")) as f:
    assert json.load(f)["_diffusers_version"] == "0.42.1"


def test_the_inference_grid_of_the_source_is_kept_in_the_config(tmp_path):
  from gen_jax.train import from_pretrained

  folder = _folder(tmp_path)
  path = os.path.join(folder, "scheduler", "scheduler_config.json")
  with open(path) as f:
    scheduler = json.load(f)
  with open(path, "w") as f:
    json.dump({**scheduler, "timestep_spacing": "trailing", "steps_offset": 1}, f)
  config = from_pretrained.use_pretrained(runs.config("ddpm_digits"), folder)
  assert config.pretrained_scheduler.to_dict() == {
    "timestep_spacing": "trailing",
    "steps_offset": 1,
  }


@pytest.mark.slow
def test_run_py_fine_tunes_and_samples_a_class_conditional_folder_without_a_null_class(
  env, tmp_path
):
  """What docs/pretrained.md promises: it fine-tunes with cond_drop_prob=0 and samples with --class_label;
  evaluation, which needs the unconditional model, is refused in one line before anything is imported.
  Before: the fine-tune was refused at start-up (check_sampler traced the sampler without labels)."""
  folder = _folder(tmp_path, num_class_embeds=10)  # the digits' 10 classes, no null row
  cwd, workdir = str(tmp_path), str(tmp_path / "finetuned")
  flags = [*DIGITS_FLAGS, f"--pretrained={folder}", "--config.model.cond_drop_prob=0"]
  runs.run_py(env, cwd, *flags, f"--workdir={workdir}")
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["3"]
  runs.run_py(env, cwd, *DIGITS_FLAGS, f"--workdir={workdir}", "--mode=sample", "--class_label=3")
  with np.load(os.path.join(workdir, "samples.npz")) as f:
    assert f["images"].shape == (4, 8, 8, 1) and set(f["labels"]) == {3}
  imported = tmp_path / "imported"
  result = runs.run_py(env, cwd, *flags, f"--workdir={imported}", "--mode=eval", check=False)
  assert result.returncode == 1 and not imported.exists(), result.stdout + result.stderr
  assert result.stderr.strip() == (
    f"error: --mode=eval: --pretrained={folder} is class-conditional without a null class, so it has no "
    "unconditional model for the likelihoods; it can sample with labels (--mode=sample) and fine-tune"
  )


@pytest.mark.slow  # a torch model and a compile: 14 s
def test_real_timesteps_match_diffusers():
  """A DDPM from a diffusers folder samples with the process samplers (euler, process_heun, ...)
  at real t between the levels: the mirror embeds a real t as UNet2DModel does (its sinusoidal
  features take any float; diffusers' Heun and k-diffusion call it so)."""
  torch = pytest.importorskip("torch")
  model = _peer_model(TINY_VARIANTS["heads_scale_shift_padding"])
  with torch.no_grad():  # the random weights barely read t: make the time embedding count
    for name, p in model.named_parameters():
      if name.startswith("time_embedding."):
        p.mul_(30.0)
  spec = UNet2DSpec.from_config(dict(model.config))
  params = diffusers_unet.params_from_state_dict(
    spec, {k: v.numpy() for k, v in model.state_dict().items()}
  )
  t = np.array([0.25, 36.7, 998.5], np.float32)
  x = _inputs(spec, len(t))
  with torch.no_grad():
    ref = model(
      torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(t)
    )
  ref = ref.sample.numpy().transpose(0, 2, 3, 1)
  out = np.asarray(jax.jit(DiffusersUNet(spec).apply)(params, x, t))
  assert _relative_error(out, ref) < 1e-5
  # Real t is not rounded: the output moves between the levels.
  at_level = np.asarray(jax.jit(DiffusersUNet(spec).apply)(params, x, np.round(t)))
  assert _relative_error(out, at_level) > 1e-3
