"""The config fields every experiment shares, with their defaults.

An experiment's get_config() starts from base_config() and sets what it needs;
every field can then be overridden on the command line as --config.<path>=value.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = "digits"  # tfds | digits | toy2d | npz | folder
  config.data.name = ""  # TFDS name, or the toy2d data set
  config.data.path = ""  # .npz file or image folder
  config.data.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.batch_size = 128  # global, over all devices
  config.data.random_flip = False

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 10_000
  config.train.max_seconds = 0.0  # wall-clock budget of the training loop (per launch); 0: none
  config.train.log_every = 100
  config.train.sample_every = 5_000
  config.train.checkpoint_every = 5_000
  config.train.keep_checkpoints = 3
  config.train.ema_decay = 0.999
  config.train.ema_warmup = True  # decay min(ema_decay, (1+n)/(10+n))
  config.train.num_sample_images = 64
  config.train.skip_nonfinite = False  # skip (and count) updates with NaN/inf gradients
  config.train.compute_dtype = "float32"  # or bfloat16: U-Net convs/matmuls (float32 params)
  config.train.remat = False  # jax.checkpoint the U-Net blocks: less memory, more compute
  config.train.cond_drop_prob = 0.1  # class-conditional models: P(label -> null class)

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"  # adam | adamw
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 0
  config.optim.schedule = "constant"  # constant | cosine (to 0 at num_steps)
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 1.0  # 0 disables clipping

  config.sample = ml_collections.ConfigDict()
  config.sample.sampler = "ddpm"  # ddpm | ddim | respaced | dpm++2m | heun
  config.sample.num_steps = ml_collections.FieldReference(None, field_type=int)
  config.sample.eta = 0.0
  config.sample.guidance_scale = 0.0  # classifier-free guidance w (conditional models)
  config.sample.batch_size = 256

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 128
  config.eval.num_examples = 0  # likelihood on the first N test examples; 0: all
  config.eval.num_samples = 1000  # sample quality from N samples; 0: skip it
  config.eval.classifier_steps = 2000  # training steps of the evaluation classifier
  config.eval.ode_steps = 100  # diffusion on images: ODE likelihood steps; 0: skip it
  return config
