"""Shared references for the diffusion tests: float64 numpy written from the papers'
formulas (never by calling gen_jax), the oracle mixtures, and small helpers.

Test modules import from here, never from each other.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import testing

# ----------------------------------------------------------------------------
# float64 numpy references (from the papers, independent of the code)
# ----------------------------------------------------------------------------


def np_linear_betas(num, start=1e-4, end=0.02):
  if num == 1:
    return np.array([start])
  return np.array([start + (end - start) * t / (num - 1) for t in range(num)])


def np_cosine_betas(num, s=0.008, max_beta=0.999):
  f = lambda t: math.cos((t / num + s) / (1 + s) * math.pi / 2) ** 2
  abar = lambda t: f(t) / f(0)
  return np.array([min(1 - abar(t + 1) / abar(t), max_beta) for t in range(num)])


def np_abar(betas):
  """alphas_cumprod by an explicit running product."""
  out, prod = [], 1.0
  for b in betas:
    prod *= 1.0 - b
    out.append(prod)
  return np.array(out)


def np_posterior(betas, x0, x_t, t):
  """q(x_{t-1} | x_t, x0) by Bayes' rule, per example t (B,) (0-based).

  prior      q(x_{t-1} | x0)     = N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}),
  likelihood q(x_t | x_{t-1})    = N(sqrt(al_t) x_{t-1}, beta_t), which as a
             function of x_{t-1} is prop. to N(x_t / sqrt(al_t), beta_t / al_t).
  Product of Gaussians: precisions add, means are precision-weighted.
  At t = 0 the "prior" is the point mass at x0: mean x0, variance 0.
  """
  betas = np.asarray(betas, np.float64)
  abar = np_abar(betas)
  x0 = np.asarray(x0, np.float64)
  x_t = np.asarray(x_t, np.float64)
  t = np.asarray(t)
  mean = np.empty_like(x0)
  var = np.empty_like(x0)
  for i, ti in enumerate(t):
    if ti == 0:
      mean[i], var[i] = x0[i], 0.0
      continue
    prior_mean = math.sqrt(abar[ti - 1]) * x0[i]
    prior_var = 1 - abar[ti - 1]
    lik_mean = x_t[i] / math.sqrt(1 - betas[ti])
    lik_var = betas[ti] / (1 - betas[ti])
    v = 1.0 / (1.0 / prior_var + 1.0 / lik_var)
    mean[i] = v * (prior_mean / prior_var + lik_mean / lik_var)
    var[i] = v
  return mean, var


def np_tilde_beta(betas, t):
  """beta~_t from Bayes' rule (t >= 1)."""
  abar = np_abar(betas)
  return 1.0 / (1.0 / (1 - abar[t - 1]) + (1 - betas[t]) / betas[t])


def np_normal_kl(m1, v1, m2, v2):
  return 0.5 * (np.log(v2 / v1) + v1 / v2 + (m1 - m2) ** 2 / v2 - 1.0)


def np_discretized_log_prob(x, mean, std):
  """log P(bin of x) for N(mean, std^2) on the 8-bit grid, edge bins open."""
  half = 1.0 / 255.0
  lo = np.where(x <= -1 + 1e-9, -np.inf, (x - half - mean) / std)
  hi = np.where(x >= 1 - 1e-9, np.inf, (x + half - mean) / std)
  return testing.log_normal_interval(lo, hi)


def np_vlb_term(betas, x0, x_t, t, eps_pred, variance, clip=False):
  betas = np.asarray(betas, np.float64)
  abar = np_abar(betas)
  x0, x_t, eps_pred = (np.asarray(a, np.float64) for a in (x0, x_t, eps_pred))
  out = []
  for i, ti in enumerate(np.asarray(t)):
    a = abar[ti]
    x0_pred = (x_t[i] - math.sqrt(1 - a) * eps_pred[i]) / math.sqrt(a)
    if clip:
      x0_pred = np.clip(x0_pred, -1, 1)
    model_mean, _ = np_posterior(betas, x0_pred[None], x_t[i][None], [ti])
    if ti == 0:
      model_var = np_tilde_beta(betas, 1)
      out.append(-np.sum(np_discretized_log_prob(x0[i], model_mean[0], math.sqrt(model_var))))
    else:
      model_var = np_tilde_beta(betas, ti) if variance == "small" else betas[ti]
      true_mean, true_var = np_posterior(betas, x0[i][None], x_t[i][None], [ti])
      out.append(np.sum(np_normal_kl(true_mean[0], true_var[0], model_mean[0], model_var)))
  return np.array(out)


def np_prior_kl(betas, x0):
  a = np_abar(betas)[-1]
  x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
  return np.sum(np_normal_kl(math.sqrt(a) * x0, 1 - a, 0.0, 1.0), axis=1)


# Small schedule for most tests: T = 20, large betas.
BETAS20 = np_linear_betas(20, 1e-3, 0.2)


def posterior_inputs(shape=(19, 3), seed=0):
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, shape)
  x_t = rng.standard_normal(shape)
  t = np.arange(shape[0]) % 20
  return x0, x_t, t


# T = 1000 linear betas (DDPM's), their alphas_cumprod and noise levels.
BETAS = np_linear_betas(1000)
ABAR = np_abar(BETAS)
SIGMAS = np.sqrt((1 - ABAR) / ABAR)


def np_karras_sigmas(sigma_min, sigma_max, n, rho=7.0):
  return np.array(
    [
      (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho)))
      ** rho
      for i in range(n)
    ]
  )


def np_nearest_level(sigma):
  return np.argmin(np.abs(np.log(SIGMAS)[None, :] - np.log(sigma)[:, None]), 1)


# ----------------------------------------------------------------------------
# The oracle mixtures
# ----------------------------------------------------------------------------


GMM2 = dict(
  weights=[0.5, 0.3, 0.2],
  means=np.array([[-0.6, -0.4], [0.5, 0.5], [0.4, -0.6]]),
  stds=[0.08, 0.12, 0.10],
)


GMM4 = dict(
  weights=[0.5, 0.3, 0.2],
  means=np.array([[-0.4, 0.3, 0.1, -0.2], [0.4, -0.3, 0.2, 0.3], [0.1, 0.4, -0.4, 0.0]]),
  stds=[0.15, 0.15, 0.15],
)


def gmm_np(params):
  return lambda x, a: testing.gmm_eps_np(x, a, **params)


# ----------------------------------------------------------------------------
# Samplers: references, criteria, counters
# ----------------------------------------------------------------------------


N_SAMPLES = 2000


def mixture_failures(samples, weights, means, stds, std_band, sw_base, sw_factor):
  """The criteria a sampler must meet to reproduce the mixture; returns the
  list of failed ones (empty = pass) and the measured numbers."""
  samples = np.asarray(samples, np.float64)
  n = len(samples)
  weights, means, stds = map(np.asarray, (weights, means, stds))
  labels = np.argmin(((samples[:, None, :] - means) ** 2).sum(-1), axis=1)
  w_hat = np.bincount(labels, minlength=len(weights)) / n
  failures = []
  # Mode weights: within 4 binomial standard errors.
  se = np.sqrt(weights * (1 - weights) / n)
  if np.any(np.abs(w_hat - weights) > 4 * se):
    failures.append(f"weights {w_hat} vs {weights}")
  ratios = []
  for k in range(len(weights)):
    mode = samples[labels == k]
    if len(mode) < 10:
      failures.append(f"mode {k} empty")
      continue
    # Mode means within 5 standard errors (+0.01 for sampler bias).
    if np.any(np.abs(mode.mean(0) - means[k]) > 5 * stds[k] / math.sqrt(len(mode)) + 0.01):
      failures.append(f"mode {k} mean {mode.mean(0)} vs {means[k]}")
    ratios.append(mode.std(0).mean() / stds[k])
  if not all(std_band[0] <= r <= std_band[1] for r in ratios):
    failures.append(f"std ratios {ratios} outside {std_band}")
  ref, _ = testing.gmm_sample(np.random.default_rng(123), n, weights, means, stds)
  sw = testing.sliced_wasserstein(samples, ref)
  if sw > sw_factor * sw_base + 0.005:
    failures.append(f"sliced W1 {sw:.4f} vs baseline {sw_base:.4f}")
  return failures, dict(
    weights=w_hat, std_ratios=np.round(ratios, 3), sw=round(sw, 4), sw_base=round(sw_base, 4)
  )


def draw_x_T(key, shape):
  """x_T as every sampler draws it: N(0, I) from split(key)[0]."""
  return np.asarray(
    jax.random.normal(jax.random.split(key)[0], shape, jnp.result_type(float)), np.float64
  )


def np_dpmpp_2m(x, timesteps, abar, eps_np):
  """DPM-Solver++(2M), Lu et al. 2022, Algorithm 2, in alpha/sigma/lambda form;
  first-order first step, and the final step to sigma = 0 returns the last
  data prediction."""
  x0_prev = h_prev = None
  for i, t in enumerate(timesteps):
    alpha, sigma = math.sqrt(abar[t]), math.sqrt(1 - abar[t])
    x0 = (x - sigma * eps_np(x, abar[t])) / alpha
    if i == len(timesteps) - 1:
      return x0
    t_next = timesteps[i + 1]
    alpha_n, sigma_n = math.sqrt(abar[t_next]), math.sqrt(1 - abar[t_next])
    h = math.log(alpha_n / sigma_n) - math.log(alpha / sigma)
    if i == 0:
      d = x0
    else:
      r = h_prev / h
      d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    x = sigma_n / sigma * x - alpha_n * (math.exp(-h) - 1) * d
    x0_prev, h_prev = x0, h
  raise AssertionError("unreachable")


def np_edm_heun(
  x_T, timesteps, abar, eps_np, noises=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0
):
  """Karras et al. 2022, Algorithm 2, with sigmas at the discrete levels of
  `timesteps` (decreasing) and sigma_N = 0; sigma_hat is rounded to the
  nearest level in log-sigma (never below sigma_i)."""
  sig_all = np.sqrt((1 - abar) / abar)
  sig = np.append(sig_all[timesteps], 0.0)
  n = len(timesteps)
  # d = (x - D(x; sigma)) / sigma with D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2)).
  deriv = lambda x, t: eps_np(x * math.sqrt(abar[t]), abar[t])
  x = sig[0] * x_T
  for i in range(n):
    gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sig[i] <= s_tmax else 0.0
    t_hat = max(
      int(np.argmin(np.abs(np.log(sig_all) - math.log(sig[i] * (1 + gamma))))), int(timesteps[i])
    )
    sig_hat = sig_all[t_hat]
    x_hat = x
    if sig_hat > sig[i]:
      x_hat = x + math.sqrt(sig_hat**2 - sig[i] ** 2) * s_noise * noises[i]
    d = deriv(x_hat, t_hat)
    x = x_hat + (sig[i + 1] - sig_hat) * d
    if sig[i + 1] > 0:
      d2 = deriv(x, timesteps[i + 1])
      x = x_hat + (sig[i + 1] - sig_hat) * (d + d2) / 2
  return x


def assert_trajectories_close(got, ref, tight=1e-8):
  """float64 samplers against the float64 reference: almost all samples agree
  to `tight`; a start near the boundary between two modes sits on a
  separatrix of the ODE, where rounding differences grow by orders of
  magnitude, so the rest agree to 1e-4. (EDM's VE coordinates cost more
  digits: x - sigma eps cancels at sigma_max ~ 157, and the next derivative
  at sigma ~ 0.01 amplifies that by sigma_max / sigma_min: tight = 1e-7.)"""
  err = np.max(np.abs(np.asarray(got) - ref), axis=-1)
  assert np.mean(err < tight) >= 0.95, np.sort(err)[-10:]
  assert np.all(err < 1e-4), np.sort(err)[-10:]


def counting(eps_fn, counter):
  def counted(x, t):
    jax.debug.callback(lambda: counter.append(1))
    return eps_fn(x, t)

  return counted


def count_primitive(jaxpr, name):
  """Occurrences of a primitive in a jaxpr, nested jaxprs included."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    stack = list(eqn.params.values())
    while stack:
      param = stack.pop()
      if isinstance(param, (list, tuple)):
        stack.extend(param)
      elif hasattr(param, "eqns"):
        count += count_primitive(param, name)
      elif hasattr(getattr(param, "jaxpr", None), "eqns"):
        count += count_primitive(param.jaxpr, name)
  return count


# ----------------------------------------------------------------------------
# Zero terminal SNR, other schedules, and the one-Gaussian oracle in any
# prediction (the sampler and likelihood oracles)
# ----------------------------------------------------------------------------


def np_rescale_zero_terminal_snr(betas):
  """Lin et al. 2024, Algorithm 1, float64: shift and scale sqrt(ac) so that
  its last value is 0 and its first unchanged, then back to betas (the last
  beta is then exactly 1)."""
  betas = np.asarray(betas, np.float64)
  sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
  first, last = sqrt_abar[0], sqrt_abar[-1]
  sqrt_abar = (sqrt_abar - last) * first / (first - last)
  abar = sqrt_abar**2
  alphas = np.append(abar[0], abar[1:] / abar[:-1])
  return 1.0 - alphas


def gaussian_model_fn(schedule, mu, s, prediction="eps"):
  """The exact model of data N(mu, s^2) per dimension, in `prediction`
  (eps | x0 | v), written with a = sqrt(ac_t), c = sqrt(1 - ac_t) and
  var_t = a^2 s^2 + c^2 > 0 at every level (also where a = 0):
    E[x0 | x_t]  = mu + a s^2 (x_t - a mu) / var_t,
    E[eps | x_t] = c (x_t - a mu) / var_t,
    v = a eps - c x0."""

  def model_fn(x_t, t):
    a = jnp.asarray(schedule.sqrt_alphas_cumprod)[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
    c = jnp.asarray(schedule.sqrt_one_minus_alphas_cumprod)[t].reshape(a.shape)
    var = a * a * s * s + c * c
    eps = c * (x_t - a * mu) / var
    x0 = mu + a * s * s * (x_t - a * mu) / var
    return {"eps": eps, "x0": x0, "v": a * eps - c * x0}[prediction]

  return model_fn


def np_sigmoid_alphas_cumprod(num, lambda_max=6.0, lambda_min=-10.0):
  """A user-given alphas_cumprod: log-SNR linear in t from lambda_max to lambda_min
  (ac = sigmoid(lambda)), the kind of schedule a paper specifies by ac directly."""
  lam = lambda_max + (lambda_min - lambda_max) * np.arange(1, num + 1) / num
  return 1.0 / (1.0 + np.exp(-lam))


GAUSS_MU, GAUSS_STD = 0.2, 0.3  # the one-Gaussian data N(0.2, 0.3^2)


def np_gaussian_ode_log_density(y, mu, std, alphas_cumprod):
  """float64 log-density (nats, per example) that the probability-flow ODE of
  the exact model of data N(mu, std^2) assigns to y (n, D) at sigma_0, with
  the prior N(0, I) on u = x_{T-1} / sqrt(1 - ac_{T-1}).

  The flow of Gaussian data is affine and keeps z = (y - mu) / sqrt(std^2 +
  sigma^2) per dimension, so with r = sqrt(ac / (1 - ac)):
    u_T = r_T mu + sqrt(1 + r_T^2 std^2) z,
    log p(y) = sum_d [log N(u_T; 0, 1) + 0.5 log(1 + r_T^2 std^2)
                      - 0.5 log(std^2 + sigma_0^2)].
  Returns (model, data): the above, and the data's own smoothed density
  log N(y; mu, std^2 + sigma_0^2) (they differ by the prior mismatch)."""
  ac = np.asarray(alphas_cumprod, np.float64)
  y = np.asarray(y, np.float64)
  sigma0_sq = (1 - ac[0]) / ac[0]
  r_top = math.sqrt(ac[-1] / (1 - ac[-1]))
  var0 = std * std
  z = (y - mu) / math.sqrt(var0 + sigma0_sq)
  u_top = r_top * mu + math.sqrt(1 + r_top**2 * var0) * z
  log_norm = -0.5 * math.log(var0 + sigma0_sq)
  model = -0.5 * (math.log(2 * math.pi) + u_top**2) + 0.5 * math.log1p(r_top**2 * var0) + log_norm
  data = -0.5 * (math.log(2 * math.pi) + z**2) + log_norm
  return model.sum(-1), data.sum(-1)


def np_gaussian_vlb(alphas_cumprod, mu, std, variance="small", decoder_std=None):
  """float64 expected terms of the variational bound, per dimension, for data
  N(mu, std^2) and its exact model, with the Gaussian decoder at t = 0.

  With x_t = a_t x0 + s_t eps, the posterior of x0 given x_t is Gaussian with
  variance pv_t = std^2 s_t^2 / (a_t^2 std^2 + s_t^2) whatever x_t, so for the
  exact x0-prediction E[(x0 - x0_hat)^2] = pv_t and, for t >= 1, with
  coef1_t = beta_t sqrt(ac_{t-1}) / (1 - ac_t) and beta~_t the posterior variance,
    small: E[L_t] = coef1_t^2 pv_t / (2 beta~_t),
    large: E[L_t] = 0.5 (log(beta_t / beta~_t) + beta~_t / beta_t + coef1_t^2 pv_t / beta_t - 1);
  t = 0 (coef1_0 = 1, coef2_0 = 0, so the decoder's mean is x0_hat):
    E[L_0] = 0.5 log(2 pi v) + pv_0 / (2 v),  v = decoder_std^2 or beta~_1;
  prior: 0.5 (ac_T (mu^2 + std^2) + (1 - ac_T) - 1 - log(1 - ac_T)).
  Returns (terms (T,), prior, total, exact_nll), the last the data's entropy
  0.5 log(2 pi std^2) + 0.5 (the bound's floor), all nats per dimension."""
  ac = np.asarray(alphas_cumprod, np.float64)
  ac_prev = np.append(1.0, ac[:-1])
  betas = 1.0 - ac / ac_prev
  var0 = std * std
  pv = var0 * (1 - ac) / (ac * var0 + 1 - ac)
  tilde = betas * (1 - ac_prev) / (1 - ac)
  coef1 = betas * np.sqrt(ac_prev) / (1 - ac)
  terms = np.empty_like(ac)
  if variance == "small":
    terms[1:] = coef1[1:] ** 2 * pv[1:] / (2 * tilde[1:])
  else:
    terms[1:] = 0.5 * (
      np.log(betas[1:] / tilde[1:])
      + tilde[1:] / betas[1:]
      + coef1[1:] ** 2 * pv[1:] / betas[1:]
      - 1
    )
  v = tilde[1] if decoder_std is None else decoder_std**2
  terms[0] = 0.5 * math.log(2 * math.pi * v) + pv[0] / (2 * v)
  a_last = ac[-1]
  prior = 0.5 * (a_last * (mu * mu + var0) - a_last - math.log1p(-a_last))
  exact = 0.5 * math.log(2 * math.pi * var0) + 0.5
  return terms, prior, terms.sum() + prior, exact
