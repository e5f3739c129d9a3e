"""Sample quality against network calls for every sampler, on the Gaussian-mixture oracle.

The eps-predictor is the exact E[eps | x_t] of a 2-D, 3-component Gaussian
mixture (gen_jax/testing.py), T = 1000 linear betas, so every difference
between rows is the sampler's own error. Quality: sliced 1-Wasserstein
distance (128 projections) between N samples and N fresh data points, the
mean over seeds; the floor is the same distance between two independent
data sets (at N = 2000 it is dominated by the binomial noise of the mode
weights, hence N = 10000). A second table gives the mean over modes of
(within-mode std of the samples) / (true std): ODE solvers with too few
steps widen the modes, ancestral samplers with the "small" variance narrow them. Wall time: one jitted call for N samples, compiled beforehand,
on whatever device JAX picks (the table in the README was measured on CPU).

  JAX_PLATFORMS=cpu python benchmarks/sampler_oracle.py [--num_samples=10000] [--seeds=3]

Not part of the test suite (about a minute on a 2-core CPU).
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gen_jax import diffusion, testing

MIXTURE = dict(
  weights=[0.5, 0.3, 0.2],
  means=np.array([[-0.6, -0.4], [0.5, 0.5], [0.4, -0.6]]),
  stds=[0.08, 0.12, 0.10],
)
CALLS = (10, 20, 35, 50, 100, 1000)  # 35: Heun with 18 sigmas


def samplers(eps_fn, schedule, n):
  """name -> (calls -> sampler(key) or None when that budget does not apply)."""
  shape = (n, 2)
  # Heun makes 2N - 1 calls for N sigmas: N = (calls + 1) // 2.
  heun_n = lambda calls: (calls + 1) // 2
  return {
    "ddpm (ancestral, all T)": lambda c: (
      None if c != 1000 else (lambda k: diffusion.ddpm_sample(k, eps_fn, schedule, shape))
    ),
    "respaced ddpm, small var": lambda c: (
      lambda k: diffusion.respaced_ddpm_sample(k, eps_fn, schedule, shape, num_steps=c)
    ),
    "respaced ddpm, large var": lambda c: (
      lambda k: diffusion.respaced_ddpm_sample(
        k, eps_fn, schedule, shape, num_steps=c, variance="large"
      )
    ),
    "ddim (eta=0)": lambda c: (
      lambda k: diffusion.ddim_sample(k, eps_fn, schedule, shape, num_steps=c)
    ),
    "dpm++2m": lambda c: (
      lambda k: diffusion.dpmpp_2m_sample(k, eps_fn, schedule, shape, num_steps=c)
    ),
    "heun (EDM), 2N-1 calls": lambda c: (
      lambda k: diffusion.heun_sample(k, eps_fn, schedule, shape, num_steps=heun_n(c))
    ),
    "heun + churn 10": lambda c: (
      lambda k: diffusion.heun_sample(k, eps_fn, schedule, shape, num_steps=heun_n(c), s_churn=10.0)
    ),
  }


def std_ratio(x):
  """Mean over modes of the within-mode std (nearest-mean assignment) / true std."""
  means, stds = MIXTURE["means"], np.asarray(MIXTURE["stds"])
  labels = np.argmin(((x[:, None] - means) ** 2).sum(-1), axis=1)
  return np.mean([x[labels == k].std(0).mean() / stds[k] for k in range(len(stds))])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_samples", type=int, default=10000)
  parser.add_argument("--seeds", type=int, default=3)
  args = parser.parse_args()
  n = args.num_samples
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000))
  eps_fn = testing.gmm_eps_fn(schedule, **MIXTURE)
  references = [
    testing.gmm_sample(np.random.default_rng(1000 + s), n, **MIXTURE)[0] for s in range(args.seeds)
  ]
  floor = np.mean(
    [
      testing.sliced_wasserstein(
        testing.gmm_sample(np.random.default_rng(2000 + s), n, **MIXTURE)[0], ref
      )
      for s, ref in enumerate(references)
    ]
  )
  print(
    f"device: {jax.devices()[0].device_kind}; N = {n} samples, "
    f"{args.seeds} seeds; data-vs-data sliced W1 floor {floor:.4f}\n"
  )
  header = "| sampler | " + " | ".join(f"{c} calls" for c in CALLS) + " |"
  print(header)
  print("|" + "---|" * (len(CALLS) + 1))
  rows = []
  for name, make in samplers(eps_fn, schedule, n).items():
    cells, ratio_cells = [], []
    for calls in CALLS:
      fn = make(calls)
      if fn is None:
        cells.append("—")
        ratio_cells.append("—")
        continue
      fn = jax.jit(fn)
      jax.block_until_ready(fn(jax.random.key(0)))  # compile
      dists, times, ratios = [], [], []
      for s, ref in enumerate(references):
        start = time.perf_counter()
        x = jax.block_until_ready(fn(jax.random.key(s)))
        times.append(time.perf_counter() - start)
        dists.append(testing.sliced_wasserstein(np.asarray(x), ref))
        ratios.append(std_ratio(np.asarray(x, np.float64)))
      cells.append(f"{np.mean(dists):.4f} ({1000 * np.median(times):.0f} ms)")
      ratio_cells.append(f"{np.mean(ratios):.3f}")
    rows.append(f"| {name} | " + " | ".join(ratio_cells) + " |")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
  print("\nWithin-mode std / true std (1 = exact):\n")
  print(header)
  print("|" + "---|" * (len(CALLS) + 1))
  print("\n".join(rows))


if __name__ == "__main__":
  main()
