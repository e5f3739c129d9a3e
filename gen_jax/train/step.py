"""How one training step is computed: the train state, the optimizer and THE step.

`make_train_step` builds the only step there is: train(), the evaluation
classifier, mle_toy's fits, the benchmarks and the tests all run it, through
`jit_train_step` where it runs on a mesh. `train_step_for(config, model)`
builds it (and its optimizer) exactly as train() does.

  train_step(state, batch, key) -> (state, metrics)

metrics: the model's loss metrics, grad_norm, learning_rate (with a
schedule), skipped_nonfinite_steps (with skip_nonfinite) and HALT, a boolean
that is True when the step went non-finite beyond what the config allows: the
loop reads it where it syncs anyway and stops (gen_jax.train.faults).
"""

import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from gen_jax.train import sharding

# With train.skip_nonfinite, this many non-finite gradients in a row stop training (NonFiniteError).
MAX_CONSECUTIVE_NONFINITE = 20
# The metric that says "stop": never logged.
HALT = "halt"


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds. A pytree; the optimizer itself is static."""

  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  ema_params: Any  # exponential moving average of params, used to sample


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over optim.warmup_steps, then constant or cosine to 0."""
  warmup = optim.warmup_steps
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0,
      optim.learning_rate,
      max(warmup, 1) if warmup else 0,
      max(num_steps, warmup + 1),
      end_value=0.0,
    )
  if warmup == 0:
    return optax.constant_schedule(optim.learning_rate)
  return optax.linear_schedule(0.0, optim.learning_rate, warmup)


def make_optimizer(
  optim, num_steps: int, skip_nonfinite: bool = False
) -> optax.GradientTransformation:
  """Gradient clipping by global norm (if grad_clip_norm > 0), then Adam/AdamW,
  inside optax.apply_if_finite.

  With skip_nonfinite an update whose gradient has a NaN/inf is dropped (the
  parameters and the inner optimizer state stay as they were) and counted in
  the state's total_notfinite. Without it the wrapper lets every update through
  (max_consecutive_errors=0), so it only adds the counters: the optimizer
  state has the same structure either way and a run can be resumed with the
  switch changed.
  """
  lr = learning_rate_schedule(optim, num_steps)
  if optim.name == "adamw":
    opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
  else:
    opt = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  if optim.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
  if optim.get("skip_grad_norm", 0.0) > 0:
    opt = skip_large_gradients(opt, optim.skip_grad_norm)
  return optax.apply_if_finite(opt, MAX_CONSECUTIVE_NONFINITE if skip_nonfinite else 0)


class SkipLargeGradientsState(NamedTuple):
  inner_state: Any
  num_skipped: jax.Array  # int32: updates skipped so far


def skip_large_gradients(inner: optax.GradientTransformation, max_norm: float):
  """Skips (no parameter change, inner state kept) every update whose gradient's global norm,
  before clipping, is at least max_norm; counts them. VDVAE's skip_threshold: a rare huge
  gradient of a deep hierarchy would otherwise move the Adam moments and parameters far, even
  clipped. config.optim.skip_grad_norm; 0 leaves the optimizer (and its state) without it."""

  def init(params):
    return SkipLargeGradientsState(inner.init(params), jnp.zeros((), jnp.int32))

  def update(grads, state, params=None):
    updates, inner_state = inner.update(grads, state.inner_state, params)
    keep = optax.tree.norm(grads) < max_norm
    updates = jax.tree.map(lambda u: jnp.where(keep, u, jnp.zeros_like(u)), updates)
    inner_state = jax.tree.map(
      lambda new, old: jnp.where(keep, new, old), inner_state, state.inner_state
    )
    return updates, SkipLargeGradientsState(
      inner_state, state.num_skipped + (~keep).astype(jnp.int32)
    )

  return optax.GradientTransformation(init, update)


def init_state(model, tx, key) -> TrainState:
  params = model.init(key)
  # The EMA starts as a copy: donating the state must not donate a buffer twice.
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    ema_params=jax.tree.map(jnp.copy, params),
  )


def make_train_step(
  model,
  tx,
  ema_decay: float,
  ema_warmup: bool,
  lr_schedule: optax.Schedule | None = None,
  skip_nonfinite: bool = False,
):
  """Returns the pure step train_step(state, batch, key) -> (state, metrics).

  model: anything with loss(params, batch, key, train) -> (loss, metrics).
  The step's randomness is fold_in(key, state.step). EMA:
  ema <- d ema + (1 - d) params with d = ema_decay, or, with ema_warmup,
  d = min(ema_decay, (1 + step) / (10 + step)) so early averages are not
  dominated by the initialisation.

  The non-finite guard: metrics[HALT] is True when the loss or the gradient
  norm is NaN/inf, or, with skip_nonfinite (tx from make_optimizer with the
  same switch, which skips such updates), when MAX_CONSECUTIVE_NONFINITE
  updates in a row were skipped; then metrics also holds
  skipped_nonfinite_steps, the running total of skipped updates.
  """

  def train_step(state: TrainState, batch, key):
    step_key = jax.random.fold_in(key, state.step)
    loss_fn = model.loss
    if getattr(model, "loss_uses_step", False):  # a step-dependent objective (KL warm-up)
      loss_fn = functools.partial(model.loss, step=state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, step_key, True)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = jnp.asarray(ema_decay, jnp.float32)
    if ema_warmup:
      n = state.step.astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    if lr_schedule is not None:
      metrics["learning_rate"] = lr_schedule(state.step)
    if isinstance(getattr(opt_state, "inner_state", None), SkipLargeGradientsState):
      metrics["skipped_large_grad_steps"] = opt_state.inner_state.num_skipped
    if skip_nonfinite:
      metrics["skipped_nonfinite_steps"] = opt_state.total_notfinite
      metrics[HALT] = opt_state.notfinite_count >= MAX_CONSECUTIVE_NONFINITE
    else:
      metrics[HALT] = ~(jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]))
    new_state = TrainState(
      step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
    )
    return new_state, metrics

  return train_step


def train_step_for(config, model):
  """(tx, train_step) of `config` (its optim and train sections), exactly as train() runs them."""
  tc = config.train
  schedule = learning_rate_schedule(config.optim, tc.num_steps)
  tx = make_optimizer(config.optim, tc.num_steps, tc.skip_nonfinite)
  step = make_train_step(model, tx, tc.ema_decay, tc.ema_warmup, schedule, tc.skip_nonfinite)
  return tx, step


def jit_train_step(train_step, mesh, state_shardings=None):
  """train_step jitted for the mesh: the state laid out as `state_shardings` (a pytree of
  shardings, from sharding.state_shardings; default: replicated) in and out, the key and the
  metrics replicated, the batch sharded along its leading axis, the state donated (updated in
  place)."""
  replicated = sharding.replicated(mesh)
  state = replicated if state_shardings is None else state_shardings
  return jax.jit(
    train_step,
    in_shardings=(state, sharding.data_sharded(mesh), replicated),
    out_shardings=(state, replicated),
    donate_argnums=0,
  )
