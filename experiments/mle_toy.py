"""KL <=> maximum likelihood on a 1-D Gaussian mixture: forward (mode-covering) and reverse (mode-seeking) fits, seconds on a CPU.

The target p is a known mixture of Gaussians. Three model densities q_theta
are fitted with Adam (learning rate decayed to 0 by a cosine), each update
the shared train step of gen_jax.train.step:

  forward_gaussian  a Gaussian, maximising the average log-likelihood
                    (1/N) sum_i log q(x_i) of N samples x_i ~ p. Its optimum
                    is the closed-form MLE: the sample mean and the biased
                    sample variance.
  forward_mixture   a K-component mixture, the same objective.
  reverse_gaussian  a Gaussian, minimising KL(q || p) = E_q[log q - log p],
                    estimated with reparameterized draws z = m + s eps.

Since E_p[-log q] = KL(p || q) + H(p), maximum likelihood is minimum
KL(p || q): the NLL and KL(p || q) curves in metrics.jsonl differ by the
constant H(p). The forward fit spreads one Gaussian over both modes; the
reverse fit sits on one mode (from the default start, the heavier right one;
from config.reverse_init_mean=-1.5, the left one).

Writes to the workdir: config.json, metrics.jsonl (and TensorBoard files):
every log_every steps, per fit, `<fit>/nll` (on the N training samples),
`<fit>/cross_entropy` and `<fit>/kl_p_q` (on fresh samples of p),
`<fit>/kl_q_p` (on samples of q); results.json (final parameters, the
closed-form MLE, H(p), the KLs); fits.png (the target density filled grey,
the forward Gaussian blue, the forward mixture green, the reverse Gaussian
red).

This is not a generative image model, so the shared trainer does not run it:
run.py calls `run(config, workdir)`, and --mode=sample|eval do not apply.

Run:
  python run.py --experiment=mle_toy --workdir=runs/mle_toy
  python run.py --experiment=mle_toy --config.reverse_init_mean=-1.5   # the reverse fit takes the left mode
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gen_jax import checks, distributions, images, vae
from gen_jax.configs import ConfigError
from gen_jax.runtime import fileio
from gen_jax.train import step as train_step_lib

FITS = ("forward_gaussian", "forward_mixture", "reverse_gaussian")
COLORS = {
  "target": (200, 200, 200),
  "forward_gaussian": (30, 80, 200),
  "forward_mixture": (30, 150, 60),
  "reverse_gaussian": (210, 40, 40),
}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.target = ml_collections.ConfigDict(
    dict(weights=(0.3, 0.7), means=(-2.0, 2.0), stds=(0.5, 0.8))
  )
  config.num_train_samples = 2000  # N, the data set x_i ~ p
  config.num_eval_samples = 100_000  # Monte Carlo samples for the KLs
  config.mixture_components = 2  # K of forward_mixture
  config.num_reverse_samples = 256  # draws from q per reverse-KL step
  config.reverse_init_mean = 0.0  # where the reverse fit starts (std 1)
  config.num_steps = 2000
  config.learning_rate = 0.05
  config.log_every = 100
  return config


# ----------------------------------------------------------------------------
# Densities and objectives. A density is a dict of (K,) arrays
# {logits, means, logvars}; a Gaussian is the case K = 1.
# ----------------------------------------------------------------------------


def target_params(config) -> dict:
  """p's parameters from config.target, checked."""
  target = config.target
  weights, means, stds = (np.asarray(target[k], np.float64) for k in ("weights", "means", "stds"))
  if not (
    weights.ndim == means.ndim == stds.ndim == 1
    and weights.size >= 1
    and weights.shape == means.shape == stds.shape
  ):
    raise ConfigError(
      "config.target.weights, .means and .stds must be tuples "
      f"of one length; got {len(weights.ravel())}, "
      f"{len(means.ravel())}, {len(stds.ravel())}"
    )
  if np.any(weights <= 0) or np.any(stds <= 0):
    raise ConfigError(
      "config.target.weights and config.target.stds must be "
      f"positive; got {tuple(weights)}, {tuple(stds)}"
    )
  return gaussian_params(weights / weights.sum(), means, stds)


def gaussian_params(weights, means, stds) -> dict:
  """{logits, means, logvars} (float32) from weights, means, standard deviations."""
  as_f32 = lambda a: jnp.asarray(np.asarray(a, np.float64), jnp.float32)
  return dict(logits=as_f32(np.log(weights)), means=as_f32(means), logvars=as_f32(2 * np.log(stds)))


def log_density(theta, x):
  """log q_theta(x), elementwise in x."""
  return distributions.gaussian_mixture_log_prob(
    x, theta["logits"], theta["means"], theta["logvars"]
  )


def negative_log_likelihood(theta, samples):
  """-(1/N) sum_i log q_theta(x_i): the MLE objective; at samples of p, an
  estimate of the cross-entropy E_p[-log q_theta] = KL(p || q_theta) + H(p)."""
  return -jnp.mean(log_density(theta, samples))


def forward_kl(theta, target, samples):
  """KL(p || q_theta) estimated at samples of p."""
  return jnp.mean(
    distributions.monte_carlo_kl_terms(
      lambda x: log_density(target, x), lambda x: log_density(theta, x), samples
    )
  )


def reverse_kl(theta, target, key, num_samples: int):
  """KL(q_theta || p) for a Gaussian q_theta, from num_samples reparameterized
  draws z = m + s eps, so the gradient flows through z into (m, log s^2)."""
  mean = jnp.broadcast_to(theta["means"], (num_samples,))
  logvar = jnp.broadcast_to(theta["logvars"], (num_samples,))
  z = vae.reparameterize(key, mean, logvar)
  return jnp.mean(
    distributions.monte_carlo_kl_terms(
      lambda x: log_density(theta, x), lambda x: log_density(target, x), z
    )
  )


@dataclasses.dataclass(frozen=True)
class Objective:
  """A loss of (theta, key), starting at theta0, behind the model interface of the shared
  train step (init, loss)."""

  loss_fn: Callable
  theta0: dict

  def init(self, key):
    del key
    return self.theta0

  def loss(self, params, batch, key, train: bool = True):
    del batch, train  # the objective draws what it needs from its key
    value = self.loss_fn(params, key)
    return value, {"loss": value}


def fit(loss_fn, theta0, key, num_steps: int, learning_rate: float):
  """Minimises loss_fn(theta, key_s), key_s = fold_in(key, s), with Adam.

  The learning rate decays from learning_rate to 0 by a cosine, so the
  iterates settle on the optimum instead of circling it. Each update is the
  shared train step (gen_jax.train.step.make_train_step, which folds the step
  number into the key; its EMA is unused), all of them in one compiled lax.scan.

  Returns:
    The parameters after 0, 1, ..., num_steps updates: a dict of
    (num_steps + 1, K) arrays.
  """
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))

  @jax.jit
  def run_all(theta0, key):
    objective = Objective(loss_fn, theta0)
    train_step = train_step_lib.make_train_step(objective, tx, 0.0, False)

    def one_step(state, _):
      state, _ = train_step(state, None, key)
      return state, state.params

    state0 = train_step_lib.init_state(objective, tx, key)
    _, history = jax.lax.scan(one_step, state0, None, length=num_steps)
    return jax.tree.map(lambda a, h: jnp.concatenate([a[None], h]), theta0, history)

  return run_all(theta0, key)


def fit_all(config, target, train_samples, key) -> dict:
  """The three fits of the module docstring; fit name -> parameter history."""
  n, k = config.num_steps, config.mixture_components
  data = np.asarray(train_samples, np.float64)
  forward_loss = lambda theta, _: negative_log_likelihood(theta, train_samples)
  # A fixed start away from the answer: mean 0, variance 1.
  gaussian0 = gaussian_params([1.0], [0.0], [1.0])
  # The mixture starts with its means at evenly spaced quantiles of the data
  # and the data's variance, equal weights.
  mixture0 = gaussian_params(
    np.full(k, 1.0 / k), np.quantile(data, (np.arange(k) + 0.5) / k), np.full(k, data.std())
  )
  reverse0 = gaussian_params([1.0], [config.reverse_init_mean], [1.0])
  reverse_loss = lambda theta, step_key: reverse_kl(
    theta, target, step_key, config.num_reverse_samples
  )
  return {
    "forward_gaussian": fit(forward_loss, gaussian0, key, n, config.learning_rate),
    "forward_mixture": fit(forward_loss, mixture0, key, n, config.learning_rate),
    "reverse_gaussian": fit(reverse_loss, reverse0, key, n, config.learning_rate),
  }


def evaluate(theta, target, train_samples, eval_samples, eval_key) -> dict:
  """Scalar metrics of one q_theta (jit- and vmap-able over theta)."""
  q_samples = distributions.gaussian_mixture_sample(
    eval_key, theta["logits"], theta["means"], theta["logvars"], eval_samples.shape
  )
  kl_q_p = jnp.mean(
    distributions.monte_carlo_kl_terms(
      lambda x: log_density(theta, x), lambda x: log_density(target, x), q_samples
    )
  )
  return {
    "nll": negative_log_likelihood(theta, train_samples),
    "cross_entropy": negative_log_likelihood(theta, eval_samples),
    "kl_p_q": forward_kl(theta, target, eval_samples),
    "kl_q_p": kl_q_p,
  }


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


def _check_config(config) -> None:
  for name in (
    "num_train_samples",
    "num_eval_samples",
    "mixture_components",
    "num_reverse_samples",
    "num_steps",
    "log_every",
  ):
    value = config[name]
    if not checks.is_integer(value) or value <= 0:
      raise ConfigError(f"config.{name} must be a positive integer, got {value!r}")
  if not checks.is_real(config.learning_rate) or config.learning_rate <= 0:
    raise ConfigError(f"config.learning_rate must be > 0, got {config.learning_rate}")


def _as_distribution(theta) -> dict:
  theta = jax.device_get(theta)
  return {
    "weights": np.asarray(jax.nn.softmax(theta["logits"])).tolist(),
    "means": np.asarray(theta["means"]).tolist(),
    "stds": np.exp(0.5 * np.asarray(theta["logvars"])).tolist(),
  }


def run(config, workdir: str) -> dict:
  """Fits, logs and plots; returns what results.json holds."""
  if jax.process_count() > 1:  # Each process would fit alone and write the same workdir.
    raise ConfigError(
      "mle_toy runs in one process: start it once, without jax.distributed (--distributed)"
    )
  _check_config(config)
  target = target_params(config)
  os.makedirs(workdir, exist_ok=True)
  fileio.write_atomically(
    os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True)
  )

  data_key, eval_key, q_key, fit_key = jax.random.split(jax.random.key(config.seed), 4)
  p_sample = jax.jit(distributions.gaussian_mixture_sample, static_argnums=4)
  train_samples = p_sample(
    data_key, target["logits"], target["means"], target["logvars"], (config.num_train_samples,)
  )
  eval_samples = p_sample(
    eval_key, target["logits"], target["means"], target["logvars"], (config.num_eval_samples,)
  )
  histories = fit_all(config, target, train_samples, fit_key)

  logged = np.unique(np.append(np.arange(0, config.num_steps, config.log_every), config.num_steps))
  evaluate_many = jax.jit(jax.vmap(evaluate, in_axes=(0, None, None, None, None)))
  metrics = {
    name: jax.device_get(
      evaluate_many(
        jax.tree.map(lambda h: h[logged], history), target, train_samples, eval_samples, q_key
      )
    )
    for name, history in histories.items()
  }
  log_p = np.asarray(log_density(target, eval_samples), np.float64)
  entropy, entropy_se = -log_p.mean(), log_p.std() / math.sqrt(log_p.size)

  from gen_jax.train import summary  # tensorboardX only where logs are written.

  writer = summary.MetricWriter(workdir)
  for i, step in enumerate(logged):
    scalars = {
      f"{name}/{key}": values[i] for name, m in metrics.items() for key, values in m.items()
    }
    scalars["target/entropy"] = entropy
    writer.write_scalars(int(step), scalars)
  writer.close()

  data = np.asarray(train_samples, np.float64)
  results = {
    "target": _as_distribution(target),
    "entropy_p": entropy,
    "entropy_p_standard_error": entropy_se,
    "closed_form_mle": {"mean": data.mean(), "variance": data.var()},
    "fits": {
      name: dict(
        _as_distribution(jax.tree.map(lambda h: h[-1], history)),
        **{k: float(v[-1]) for k, v in metrics[name].items()},
      )
      for name, history in histories.items()
    },
  }
  fileio.write_atomically(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))

  means, stds = np.asarray(target["means"]), np.exp(0.5 * np.asarray(target["logvars"]))
  grid = np.linspace((means - 4 * stds).min(), (means + 4 * stds).max(), 801)
  density = lambda theta: np.exp(np.asarray(log_density(theta, jnp.asarray(grid, jnp.float32))))
  curves = [("target p", density(target), COLORS["target"])]
  for name, history in histories.items():
    label = {
      "forward_gaussian": "Gaussian, max likelihood = min KL(p||q)",
      "forward_mixture": f"{config.mixture_components}-mixture, max likelihood",
      "reverse_gaussian": "Gaussian, min KL(q||p)",
    }[name]
    curves.append((label, density(jax.tree.map(lambda h: h[-1], history)), COLORS[name]))
  images.save_line_plot(os.path.join(workdir, "fits.png"), grid, curves, filled=0)

  print(
    f"H(p) = {entropy:.4f} +- {entropy_se:.4f} nats; closed-form MLE: mean "
    f"{data.mean():.4f}, variance {data.var():.4f}"
  )
  print(
    f"{'fit':<18} {'nll':>8} {'E_p[-log q]':>12} {'KL(p||q)':>9} {'KL(q||p)':>9}"
    "  weights / means / stds"
  )
  for name, r in results["fits"].items():
    print(
      f"{name:<18} {r['nll']:8.4f} {r['cross_entropy']:12.4f} {r['kl_p_q']:9.4f} "
      f"{r['kl_q_p']:9.4f}  {np.round(r['weights'], 3).tolist()} "
      f"{np.round(r['means'], 3).tolist()} {np.round(r['stds'], 3).tolist()}"
    )
  print(f"Wrote {workdir}/results.json, metrics.jsonl, fits.png")
  return results
