"""Variational diffusion models (Kingma et al. 2021): the continuous-time bound, as pure functions.

Sign convention, once (google-research/vdm's): gamma(t) = -log SNR(t), increasing in t in [0, 1],
  alpha_t^2 = sigmoid(-gamma_t),  sigma_t^2 = sigmoid(gamma_t),  z_t = alpha_t x + sigma_t eps,
so alpha_t^2 + sigma_t^2 = 1 (variance preserving) and SNR = alpha^2 / sigma^2 = exp(-gamma).
Data x lie in [-1, 1]; with the discretized decoder, on gen_jax's 8-bit grid x = k / 127.5 - 1.

The bound on -log P(x), per example, in nats (the paper's eqs. 11-17):
  L = L_prior + L_recon + L_diffusion,
  L_prior  = KL(q(z_1 | x) || N(0, I)) = 1/2 sum_i (alpha_1^2 x_i^2 + sigma_1^2 - log sigma_1^2 - 1),
  L_recon  = E_{q(z_0|x)} [-log p(x | z_0)], p(x_i | z_0) proportional to q(z_0,i | x_i) over the
             256 levels (a softmax of -(z_0,i / alpha_0 - level)^2 / (2 exp(gamma_0))), or, for
             continuous data, the density N(x; z_0 / alpha_0, exp(gamma_0)) ("gaussian"),
  L_inf    = 1/2 E_{t ~ U(0, 1), eps} [gamma'(t) ||eps - eps_hat(z_t, t)||^2]        (T = 0),
  L_T      = T/2 E_{i ~ U{1..T}, eps} [expm1(gamma(t_i) - gamma(t_i - 1/T)) ||eps - eps_hat||^2],
             t_i = i / T, the discrete-time bound with T steps (T > 0); L_T >= L_2T >= L_inf.
In expectation L_inf = 1/2 int_{gamma_0}^{gamma_1} E||eps - eps_hat||^2 dgamma depends on the
schedule only through its endpoints (the paper's invariance): the interior of a learned schedule
is free, and is trained to minimise the variance of the estimate (`variance_tap`, `objective`).

Schedules (`LogSNRSchedule`): "linear" (vdm's NoiseSchedule_FixedLinear), "cosine" (the cosine
schedule of Nichol & Dhariwal 2021 truncated to the same endpoints), "learned" (vdm's monotone
network, normalised so that its endpoints are two parameters of their own).

An eps-model here is `eps_fn(z_t, gamma_t) -> eps_hat`, z_t (B, ...) and gamma_t (B,).

Longer than the house's ~400 lines on purpose: the bound, its schedules, its variance-reducing
gradient and its sampler stay together, as google-research/vdm keeps the model's mathematics in one
file.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gen_jax.diffusion import process
from gen_jax.diffusion._helpers import sum_data_dims
from gen_jax.diffusion.losses import _check_grid, _on_grid

Array = jax.Array

SCHEDULES = ("linear", "cosine", "learned")
DECODERS = ("discretized", "gaussian")
NUM_LEVELS = 256  # 8-bit data


def alpha_sigma(gamma) -> tuple[Array, Array]:
  """(alpha, sigma) = (sqrt(sigmoid(-gamma)), sqrt(sigmoid(gamma))), elementwise: the variance-
  preserving process at log-SNR -gamma, computed as gen_jax.diffusion.process computes every VP
  process (so `process.log_snr_process` of a VDM schedule gives these numbers bit for bit)."""
  return process.vp_alpha_sigma(-gamma)


# ----------------------------------------------------------------------------
# Schedules gamma(t) = -log SNR(t)
# ----------------------------------------------------------------------------


def linear_gamma(t, *, gamma_min: float, gamma_max: float) -> Array:
  """gamma(t) = gamma_min + (gamma_max - gamma_min) t (vdm's fixed linear schedule)."""
  return gamma_min + (gamma_max - gamma_min) * t


def cosine_gamma(t, *, gamma_min: float, gamma_max: float) -> Array:
  """The cosine schedule, alpha = cos(theta), sigma = sin(theta), so gamma = 2 log tan(theta),
  with theta linear in t between the angles of the endpoints:
    theta(t) = a + (b - a) t,  a = atan(exp(gamma_min / 2)),  b = atan(exp(gamma_max / 2)).
  """
  a, b = math.atan(math.exp(gamma_min / 2)), math.atan(math.exp(gamma_max / 2))
  return 2.0 * jnp.log(jnp.tan(a + (b - a) * t))


def init_monotone_net(key, num_features: int = 1024) -> dict:
  """Parameters of vdm's monotone network f(t) (NoiseSchedule_NNet, l1 kernel 1, bias 0)."""
  k2, k3 = jax.random.split(key)
  return {
    "l1": {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros((1,))},
    "l2": {
      "kernel": 0.01 * jax.random.normal(k2, (1, num_features)),  # flax's normal() init
      "bias": jnp.zeros((num_features,)),
    },
    "l3": {"kernel": 0.01 * jax.random.normal(k3, (num_features, 1))},
  }


def monotone_net(params, t) -> Array:
  """vdm's strictly increasing network: every kernel enters as its absolute value,
    f(t) = |w1| t + b1 + |W3|^T (2 sigmoid(|W2|^T (2t - 1) + b2) - 1) / F,
  increasing in t because each layer is a positive combination of increasing functions.

  Args:
    t: (B,) times. Returns: (B,).
  """
  t = jnp.asarray(t)[:, None]
  l1, l2, l3 = params["l1"], params["l2"], params["l3"]
  num_features = l2["kernel"].shape[1]
  h = t @ jnp.abs(l1["kernel"]) + l1["bias"]
  g = (2.0 * t - 1.0) @ jnp.abs(l2["kernel"]) + l2["bias"]
  g = 2.0 * (jax.nn.sigmoid(g) - 0.5)  # tanh(g / 2), as vdm writes it
  h = h + g @ jnp.abs(l3["kernel"]) / num_features
  return h[:, 0]


@jax.custom_vjp
def variance_tap(values):
  """Identity on `values` (a pytree of (B,) arrays), plus zeros (B,), the tap.

  Backward: each cotangent of `values` is multiplied by 2 x the cotangent of the tap. With the
  objective mean_w(L) + sum_i tap_i stop_gradient(L_i) (`objective`), the tap's cotangent is L_i,
  so what lies upstream of `values` receives w_i 2 L_i dL_i = d(w_i L_i^2): the gradient of the
  loss' second moment, at the cost of the loss' own backward pass (the paper's trick, sec. 5.2).
  """
  leaves = jax.tree.leaves(values)
  return values, jnp.zeros(leaves[0].shape, leaves[0].dtype)


def _tap_fwd(values):
  return variance_tap(values), values


def _tap_bwd(values, cotangents):
  values_bar, tap_bar = cotangents

  def scaled(value, value_bar):
    out = 2.0 * tap_bar * value_bar
    # Under an explicit mesh the cotangent may be batch-sharded where the value is not:
    # a custom_vjp must return its inputs' types.
    want = jax.typeof(value).sharding
    if want.mesh.axis_names and jax.typeof(out).sharding != want:
      out = jax.sharding.reshard(out, want)
    return out

  return (jax.tree.map(scaled, values, values_bar),)


variance_tap.defvjp(_tap_fwd, _tap_bwd)


@dataclasses.dataclass(frozen=True)
class LogSNRSchedule:
  """gamma(t) = -log SNR(t) on t in [0, 1], fixed or learned.

  kind: "linear", "cosine" (fixed, no parameters: `init` gives {}) or "learned":
    gamma(t) = gamma_0 + (gamma_1 - gamma_0) (f(t) - f(0)) / (f(1) - f(0)),
  f the monotone network (`monotone_net`), gamma_0 and gamma_1 parameters of their own
  initialised at gamma_min and gamma_max: monotone by construction, exactly gamma_0 and gamma_1
  at the ends, linear at initialisation.
  """

  kind: str = "linear"
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  num_features: int = 1024

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f"LogSNRSchedule: kind must be one of {SCHEDULES}, got {self.kind!r}")
    if not self.gamma_min < self.gamma_max:
      raise ValueError(
        f"LogSNRSchedule: gamma_min < gamma_max needed, got {self.gamma_min}, {self.gamma_max}"
      )

  def init(self, key) -> dict:
    if self.kind != "learned":
      return {}
    # The default float, as the fixed schedules' endpoints and the net's parameters: float32
    # endpoints under jax_enable_x64 would round gamma_min (-13.3 -> -13.300000190734863).
    dtype = jnp.result_type(float)
    return {
      "gamma_0": jnp.asarray(self.gamma_min, dtype),
      "gamma_1": jnp.asarray(self.gamma_max, dtype),
      "net": init_monotone_net(key, self.num_features),
    }

  def endpoints(self, params) -> tuple[Array, Array]:
    """(gamma(0), gamma(1))."""
    if self.kind == "learned":
      return params["gamma_0"], params["gamma_1"]
    dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
    return jnp.asarray(self.gamma_min, dtype), jnp.asarray(self.gamma_max, dtype)

  def __call__(self, params, t) -> Array:
    """gamma(t), t (B,) -> (B,)."""
    return self.gamma_and_slope(params, t)[0]

  def gamma_and_slope(self, params, t, *, tap: bool = False):
    """(gamma(t), gamma'(t), tap): t (B,) -> (B,), (B,), and the variance tap (zeros (B,)) of
    a learned schedule's interior when `tap` (else None): see `variance_tap`."""
    t = jnp.asarray(t)
    if self.kind != "learned":
      fn = fixed_gamma_fn(self.kind, self.gamma_min, self.gamma_max)
      gamma, slope = jax.jvp(fn, (t,), (jnp.ones_like(t),))
      return gamma, slope, None
    net = params["net"]
    ends = monotone_net(net, jnp.array([0.0, 1.0], t.dtype))
    shape = lambda s: (monotone_net(net, s) - ends[0]) / (ends[1] - ends[0])
    s, ds = jax.jvp(shape, (t,), (jnp.ones_like(t),))
    tap_value = None
    if tap:
      (s, ds), tap_value = variance_tap((s, ds))
    gamma_0, gamma_1 = params["gamma_0"], params["gamma_1"]
    return gamma_0 + (gamma_1 - gamma_0) * s, (gamma_1 - gamma_0) * ds, tap_value


def fixed_gamma_fn(kind: str, gamma_min: float, gamma_max: float):
  """The fixed schedule `kind` as a function of t alone."""
  fn = linear_gamma if kind == "linear" else cosine_gamma
  return lambda t: fn(t, gamma_min=gamma_min, gamma_max=gamma_max)


# ----------------------------------------------------------------------------
# The terms of the bound
# ----------------------------------------------------------------------------


def diffusion_loss(*, eps, eps_hat, slope) -> Array:
  """The continuous-time diffusion loss at one t: 1/2 gamma'(t) ||eps - eps_hat||^2.

  eps, eps_hat: (B, ...); slope: gamma'(t), (B,). Returns (B,), nats.
  """
  return 0.5 * slope * sum_data_dims(jnp.square(eps - eps_hat), 1)


def discrete_diffusion_loss(*, eps, eps_hat, gamma_t, gamma_s, num_steps: int) -> Array:
  """The T-step diffusion loss at one step s = t - 1/T -> t:
    T/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2 = T/2 (SNR_s / SNR_t - 1) ||eps - eps_hat||^2,
  T times the KL of that step (the average over the T steps is the sum of the KLs).

  eps, eps_hat: (B, ...); gamma_t, gamma_s: (B,). Returns (B,), nats.
  """
  mse = sum_data_dims(jnp.square(eps - eps_hat), 1)
  return 0.5 * num_steps * jnp.expm1(gamma_t - gamma_s) * mse


def prior_kl(x, gamma_1) -> Array:
  """KL(q(z_1 | x) || N(0, I)) = 1/2 sum_i (alpha_1^2 x_i^2 + sigma_1^2 - log sigma_1^2 - 1),
  written as 1/2 sum_i (alpha_1^2 (x_i^2 - 1) + softplus(-gamma_1)) (no cancellation when
  sigma_1 -> 1). x: (B, ...); gamma_1: scalar or (B,). Returns (B,), nats."""
  gamma_1 = jnp.reshape(gamma_1, jnp.shape(gamma_1) + (1,) * (jnp.ndim(x) - jnp.ndim(gamma_1)))
  alpha_sq = jax.nn.sigmoid(-gamma_1)
  return 0.5 * sum_data_dims(alpha_sq * (jnp.square(x) - 1.0) + jax.nn.softplus(-gamma_1), 1)


def grid_levels(dtype=jnp.float32) -> Array:
  """The 256 levels of 8-bit data in [-1, 1]: k / 127.5 - 1."""
  return jnp.arange(NUM_LEVELS, dtype=dtype) / 127.5 - 1.0


def decoder_logits(z_0_rescaled, gamma_0) -> Array:
  """Logits of p(x_i | z_0) over the 256 levels: -(z_0,i / alpha_0 - level)^2 / (2 exp(gamma_0)),
  i.e. p(x | z_0) proportional to q(z_0 | x) with a uniform prior over levels (vdm's decoder).

  z_0_rescaled: z_0 / alpha_0, (B, ...); gamma_0: scalar. Returns (B, ..., 256).
  """
  diff = z_0_rescaled[..., None] - grid_levels(z_0_rescaled.dtype)
  return -0.5 * jnp.square(diff) * jnp.exp(-gamma_0)


def reconstruction_nll(x, *, eps, gamma_0, decoder: str = "discretized") -> Array:
  """-log p(x | z_0) at z_0 = alpha_0 x + sigma_0 eps, summed over dimensions.

  z_0 / alpha_0 = x + exp(gamma_0 / 2) eps. decoder "discretized": x on the 8-bit grid, the
  categorical of `decoder_logits`; "gaussian": the density N(x; z_0 / alpha_0, exp(gamma_0)),
  whose value is 1/2 (log 2 pi + gamma_0 + eps^2) per dimension.

  x, eps: (B, ...); gamma_0: scalar. Returns (B,), nats.
  """
  if decoder == "gaussian":
    return 0.5 * sum_data_dims(math.log(2 * math.pi) + gamma_0 + jnp.square(eps), 1)
  z_rescaled = x + jnp.exp(0.5 * gamma_0) * eps
  logits = decoder_logits(z_rescaled, gamma_0)
  index = jnp.clip(jnp.round((x + 1.0) * 127.5).astype(jnp.int32), 0, NUM_LEVELS - 1)
  picked = jnp.take_along_axis(logits, index[..., None], axis=-1)[..., 0]
  return -sum_data_dims(picked - jax.nn.logsumexp(logits, axis=-1), 1)


def sample_times(key, batch: int, *, antithetic: bool = True) -> Array:
  """t in [0, 1), (batch,): uniform, or antithetic (vdm's low-discrepancy draw):
  t_b = (u + b / batch) mod 1 with one u ~ U(0, 1), so the batch covers [0, 1) evenly."""
  if antithetic:
    u = jax.random.uniform(key, ())
    return jnp.mod(u + jnp.arange(batch) / batch, 1.0)
  return jax.random.uniform(key, (batch,))


def discretize_times(t, num_steps: int) -> Array:
  """t in [0, 1) -> the end of its step, t_i = i / T with i = floor(t T) + 1 in {1..T}."""
  return (jnp.floor(t * num_steps) + 1.0) / num_steps


class VDMTerms(NamedTuple):
  """The bound's terms per example, in nats, (B,) each."""

  reconstruction: Array  # -log p(x | z_0), one z_0 ~ q(z_0 | x)
  prior: Array  # KL(q(z_1 | x) || N(0, I))
  diffusion: Array  # L_inf (T = 0) or L_T, averaged over the example's time samples
  total: Array  # the sum: an unbiased estimate of the bound on -log P(x)
  tap: Array | None  # the learned interior's variance tap (zeros), or None; see `objective`


def check_options(*, decoder: str, num_steps: int, time_samples: int) -> None:
  """ValueError naming the argument unless decoder, num_steps and time_samples can work."""
  if decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(
      f"num_steps must be 0 (continuous time) or a positive integer, got {num_steps!r}"
    )
  if isinstance(time_samples, bool) or not isinstance(time_samples, int) or time_samples < 1:
    raise ValueError(f"time_samples must be a positive integer, got {time_samples!r}")


def vdm_terms(
  key,
  eps_fn,
  schedule: LogSNRSchedule,
  schedule_params,
  x,
  *,
  num_steps: int = 0,
  time_samples: int = 1,
  antithetic: bool = True,
  decoder: str = "discretized",
  variance_tap: bool = False,
) -> VDMTerms:
  """Every term of the bound at one draw each (the diffusion term at `time_samples` times).

  The times of example b are t_bk = (u_b + k / K) mod 1, k < K = time_samples, with u from
  `sample_times` (antithetic over the batch or iid): stratified, so each example's diffusion
  term is an unbiased estimate whose variance falls fast with K; with T = num_steps > 0 and
  K = T every step is visited exactly once (the T-step bound's sum, as DDPM's `vlb_terms`).
  Each time gets its own eps ~ N(0, I); one compiled `lax.scan` over k, K network calls.

  Args:
    key: PRNG key (times, noise, the decoder's noise).
    eps_fn: (z_t (B, ...), gamma_t (B,)) -> eps_hat (B, ...).
    schedule, schedule_params: gamma(t) (`LogSNRSchedule`) and its parameters.
    x: (B, ...) data; on the 8-bit grid in [-1, 1] for decoder "discretized" (ValueError when
      concrete; the example's terms are NaN when traced).
    num_steps: T = 0 for the continuous-time loss L_inf, T > 0 for L_T.
    variance_tap: give the learned schedule's interior the gradient of E[L_diffusion^2]
      (continuous time only, where the expected bound does not depend on it); see `objective`.

  Returns:
    VDMTerms in nats.
  """
  check_options(decoder=decoder, num_steps=num_steps, time_samples=time_samples)
  if variance_tap and num_steps:
    raise ValueError(
      "variance_tap needs num_steps=0: the T-step bound depends on the schedule's interior, "
      "which must then be trained on the bound"
    )
  if decoder == "discretized":
    _check_grid(x, "vdm_terms")
  time_key, noise_key, recon_key = jax.random.split(key, 3)
  batch = x.shape[0]
  u = sample_times(time_key, batch, antithetic=antithetic)
  gamma_0, gamma_1 = schedule.endpoints(schedule_params)
  tap = variance_tap and schedule.kind == "learned"
  expand = lambda v: v.reshape((batch,) + (1,) * (x.ndim - 1))

  def diffusion_at(k):
    t = jnp.mod(u + k / time_samples, 1.0)
    if num_steps:
      t = discretize_times(t, num_steps)
    gamma_t, slope, tap_k = schedule.gamma_and_slope(schedule_params, t, tap=tap)
    alpha_t, sigma_t = alpha_sigma(gamma_t)
    eps = jax.random.normal(jax.random.fold_in(noise_key, k), x.shape, x.dtype)
    z_t = expand(alpha_t) * x + expand(sigma_t) * eps
    eps_hat = eps_fn(z_t, gamma_t)
    if num_steps:
      gamma_s = schedule(schedule_params, t - 1.0 / num_steps)
      loss = discrete_diffusion_loss(
        eps=eps, eps_hat=eps_hat, gamma_t=gamma_t, gamma_s=gamma_s, num_steps=num_steps
      )
    else:
      loss = diffusion_loss(eps=eps, eps_hat=eps_hat, slope=slope)
    return loss, tap_k

  if time_samples == 1:
    diffusion, tap_value = diffusion_at(0)
  else:
    _, (losses, taps) = jax.lax.scan(
      lambda carry, k: (carry, diffusion_at(k)), None, jnp.arange(time_samples)
    )
    diffusion = losses.mean(0)
    tap_value = None if taps is None else taps.sum(0)
  recon_eps = jax.random.normal(recon_key, x.shape, x.dtype)
  reconstruction = reconstruction_nll(x, eps=recon_eps, gamma_0=gamma_0, decoder=decoder)
  prior = prior_kl(x, gamma_1)
  if decoder == "discretized":
    on_grid = _on_grid(x, 1)
    reconstruction = jnp.where(on_grid, reconstruction, jnp.nan)
  total = reconstruction + prior + diffusion
  return VDMTerms(reconstruction, prior, diffusion, total, tap_value)


def objective(terms: VDMTerms, mask=None) -> Array:
  """The training loss: the batch mean of the bound (masked mean with `mask`) plus
  sum_b tap_b stop_gradient(diffusion_b), which is 0 in value: the network and the schedule's
  endpoints get the bound's gradient, a tapped learned interior that of E[L_diffusion^2]
  (`variance_tap`), i.e. of the estimate's variance, since its mean does not depend on it."""
  if mask is None:
    loss = jnp.mean(terms.total)
  else:
    loss = jnp.sum(terms.total * mask) / jnp.maximum(jnp.sum(mask), 1)
  if terms.tap is not None:
    loss = loss + jnp.sum(terms.tap * jax.lax.stop_gradient(terms.diffusion))
  return loss


def bits_per_dim(total, num_dims: int) -> Array:
  """nats -> bits per dimension: total / (D ln 2)."""
  return total / (num_dims * math.log(2.0))


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------


def ancestral_step(*, eps_hat, z_t, noise, gamma_t, gamma_s) -> Array:
  """One step z_t -> z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t)), s < t (vdm's sample):
    c = -expm1(gamma_s - gamma_t) = 1 - SNR_t / SNR_s,
    z_s = alpha_s / alpha_t (z_t - sigma_t c eps_hat) + sqrt(sigma_s^2 c) noise.

  eps_hat, z_t, noise: (B, ...); gamma_t, gamma_s: scalars. Returns (B, ...).
  Keyword-only: eps_hat, z_t and noise have the same shape, so a swap would run silently.
  """
  alpha_t, sigma_t = alpha_sigma(gamma_t)
  alpha_s, sigma_s = alpha_sigma(gamma_s)
  c = -jnp.expm1(gamma_s - gamma_t)
  return alpha_s / alpha_t * (z_t - sigma_t * c * eps_hat) + jnp.sqrt(c) * sigma_s * noise


def decode(z_0, gamma_0, decoder: str = "discretized") -> Array:
  """The data from z_0: "discretized": the most probable level of p(x | z_0) (the level nearest
  to z_0 / alpha_0); "gaussian": the decoder's mean z_0 / alpha_0."""
  alpha_0, _ = alpha_sigma(gamma_0)
  rescaled = z_0 / alpha_0
  if decoder == "gaussian":
    return rescaled
  return jnp.clip(jnp.round((rescaled + 1.0) * 127.5), 0, NUM_LEVELS - 1) / 127.5 - 1.0


def sample(
  key,
  eps_fn,
  schedule: LogSNRSchedule,
  schedule_params,
  shape,
  *,
  num_steps: int,
  decoder: str = "discretized",
) -> Array:
  """Ancestral sampling in discrete time: z_1 ~ N(0, I), then `ancestral_step` from t = i / T
  to s = (i - 1) / T for i = T..1 on the schedule's own times, then `decode`.

  Returns (shape) samples: on the 8-bit grid ("discretized") or continuous ("gaussian").
  """
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  if decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
  init_key, step_key = jax.random.split(key)
  z = jax.random.normal(init_key, shape)
  times = jnp.arange(num_steps + 1, dtype=z.dtype) / num_steps
  gammas = schedule(schedule_params, times)
  batch = shape[0]

  def body(i, z):
    index = num_steps - i  # t = index / T, s = (index - 1) / T
    gamma_t, gamma_s = gammas[index], gammas[index - 1]
    eps_hat = eps_fn(z, jnp.full((batch,), gamma_t))
    noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, z.dtype)
    return ancestral_step(eps_hat=eps_hat, z_t=z, noise=noise, gamma_t=gamma_t, gamma_s=gamma_s)

  z_0 = jax.lax.fori_loop(0, num_steps, body, z)
  return decode(z_0, gammas[0], decoder)
