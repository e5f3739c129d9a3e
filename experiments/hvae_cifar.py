"""Hierarchical (top-down) VAE on CIFAR-10, VDVAE-style, logistic-mixture decoder, bits/dim (TFDS cifar10).

The hvae_digits model at CIFAR scale: 26 stochastic layers at 1x1 to 32x32 (VDVAE's resolutions;
VDVAE's CIFAR model has more layers and width 384 against 256 here), 10 logistics per channel,
VDVAE's optimizer settings (AdamW 2e-4, weight decay 0.01, 100 warm-up steps, gradient clip 200
and skip threshold 400, here times 3072 because our loss is nats per image, not per dimension;
EMA 0.9999). Anchors, bits/dim on the test set: NVAE 2.91, VDVAE 2.87. On accelerators:

  python run.py --experiment=hvae_cifar --workdir=runs/hvae_cifar
  python run.py --experiment=hvae_cifar --workdir=runs/hvae_cifar --mode=eval --inception_weights=pt_inception-2015-12-05.npz
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.batch_size = 32
  config.data.random_flip = True

  config.model = ml_collections.ConfigDict(
    dict(
      width=256,
      latent_channels=16,
      resolutions=(1, 4, 8, 16, 32),
      layers_per_resolution=(2, 3, 6, 8, 7),
      encoder_blocks=4,
      min_scale=0.01,
      likelihood="logistic_mixture",
      num_mixtures=10,
      binarize=True,
      kl_warmup_steps=10_000,
      free_bits=0.0,
      temperature=1.0,
      iwae_samples=5000,
      iwae_chunk=10,
    )
  )

  config.train.num_steps = 1_000_000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 10_000
  config.train.ema_decay = 0.9999
  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.01
  config.optim.grad_clip_norm = 200.0 * 3072
  config.optim.skip_grad_norm = 400.0 * 3072
  config.eval.batch_size = 50
  config.eval.num_samples = 50_000
  config.eval.classifier_steps = 10_000
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_hvae
