"""Tests of gen_jax.nets: the U-Net's mixed precision and rematerialisation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gen_jax import diffusion, nets

MODEL = ml_collections.ConfigDict(
  dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1, num_groups=4)
)
SCHEDULE = diffusion.make_schedule(diffusion.linear_betas(1000))


pytestmark = pytest.mark.usefixtures("fast_compile")


def setup(compute_dtype="float32", remat=False):
  net = nets.unet_from_config(MODEL, compute_dtype, remat)
  x0 = jax.random.uniform(jax.random.key(0), (8, 8, 8, 1), minval=-1, maxval=1)
  params = jax.jit(net.init)(jax.random.key(1), x0, jnp.zeros((8,), jnp.int32))
  # Zero-initialised output layers make eps = 0 everywhere: perturb the
  # parameters so every layer matters.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(
    tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  )
  return net, params, x0


def loss_fn(net, params, x0, train=True):
  eps_fn = lambda x_t, t: net.apply(
    params, x_t, t, train=train, rngs={"dropout": jax.random.key(3)}
  )
  return diffusion.simple_loss(jax.random.key(4), eps_fn, SCHEDULE, x0).mean()


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_output():
  net, params, x0 = setup("bfloat16")
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(net.apply)(params, x0, jnp.full((8,), 10, jnp.int32))
  assert out.dtype == jnp.float32


@pytest.mark.slow
def test_bfloat16_loss_and_grads_match_float32():
  net32, params, x0 = setup("float32")
  net16, _, _ = setup("bfloat16")
  loss32, grads32 = jax.jit(jax.value_and_grad(lambda p: loss_fn(net32, p, x0)))(params)
  loss16, grads16 = jax.jit(jax.value_and_grad(lambda p: loss_fn(net16, p, x0)))(params)
  # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%); a few
  # layers of it compound to about 1% on the loss.
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  flat32, flat16 = (
    jnp.concatenate([g.ravel() for g in jax.tree.leaves(g)]) for g in (grads32, grads16)
  )
  cosine = jnp.dot(flat32, flat16) / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
  assert cosine > 0.99
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))


@pytest.mark.slow
def test_remat_changes_nothing_but_memory():
  train = True  # dropout on: remat must replay the same dropout masks
  net, params, x0 = setup()
  remat_net, _, _ = setup(remat=True)
  grad = lambda n: jax.jit(jax.value_and_grad(lambda p: loss_fn(n, p, x0, train)))(params)
  (loss, grads), (loss_remat, grads_remat) = grad(net), grad(remat_net)
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_unknown_compute_dtype_names_the_flag():
  with pytest.raises(ValueError, match="compute_dtype"):
    nets.unet_from_config(MODEL, "float16")


@pytest.mark.slow
def test_class_conditional_unet_uses_its_label_and_a_null_class():
  config = MODEL.copy_and_resolve_references()
  config.num_classes = 3
  net = nets.unet_from_config(config)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  t = jnp.full((4,), 5, jnp.int32)
  params = net.init(jax.random.key(1), x, t, jnp.zeros((4,), jnp.int32))
  table = params["params"]["class_embedding"]["kernel"]
  assert table.shape == (3 + 1, 4 * MODEL.ch)  # K classes and the null class
  params = jax.tree.map(lambda p: p + 0.05, params)  # wake the zero-initialised output
  out = {c: net.apply(params, x, t, jnp.full((4,), c, jnp.int32)) for c in range(4)}
  assert not np.allclose(out[0], out[1])
  np.testing.assert_array_equal(net.apply(params, x, t), out[3])  # no label = null label
  with pytest.raises(ValueError, match="num_classes"):
    nets.unet_from_config(MODEL).init(jax.random.key(1), x, t, jnp.zeros((4,), jnp.int32))
