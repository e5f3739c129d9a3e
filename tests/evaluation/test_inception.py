"""Tests of gen_jax.evaluation.inception (the FID Inception-v3) and scripts/convert_inception_weights.py, without real weights.

No network here, so the published weights are never loaded: the tests check the architecture against
torchvision's published parameter count, the layers' conventions (PyTorch weight layouts, BatchNorm, TF-style
average pooling, PyTorch's bilinear resize) against float64 numpy written here, the weight files' round trip and
errors, and the converter on two small PyTorch files written by torch 2.13 (tests/fixtures/, recipe below).
"""

import io
import math
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.evaluation import inception
from tests.support import runs
from tests.support.inception import random_variables

DATA = os.path.join(runs.REPO, "tests", "fixtures")


pytestmark = pytest.mark.usefixtures("fast_compile")


# ----------------------------------------------------------------------------------------------------------------
# Architecture


def test_parameter_count_is_torchvisions_inception_v3_without_aux_and_with_1008_classes():
  # torchvision's inception_v3 has 27,161,264 parameters (its weights' published meta). The FID graph drops the
  # auxiliary classifier (conv0 768*128 + BN 2*128, conv1 128*768*25 + BN 2*768, fc 768*1000 + 1000) and has a
  # 1008-way fc instead of 1000-way.
  aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
  expected = 27_161_264 - aux - (2048 * 1000 + 1000) + (2048 * 1008 + 1008)
  variables = inception.abstract_variables()
  assert (
    sum(math.prod(s.shape) for s in jax.tree.leaves(variables["params"])) == expected == 23_850_960
  )
  # 94 BasicConv2d layers, each with a BatchNorm's running mean and variance.
  names = inception.state_dict_names(variables)
  assert len(names) == 94 * 5 + 2
  assert sum(name.endswith(".conv.weight") for name in names) == 94


@pytest.mark.slow
def test_output_shapes_for_rgb_and_grayscale():
  variables = inception.abstract_variables()
  model = inception.FIDInceptionV3()
  for shape in ((3, 32, 32, 3), (2, 28, 28, 1), (1, 299, 299, 3)):
    pool, logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert pool.shape == (shape[0], inception.POOL_FEATURES) == (shape[0], 2048)
    assert logits.shape == (shape[0], inception.NUM_CLASSES) == (shape[0], 1008)
  with pytest.raises(ValueError, match="B, H, W, 1 or 3"):
    jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32))


def numpy_basic_conv(x, weight, gamma, beta, mean, var, stride=1, padding=(0, 0)):
  """PyTorch's Conv2d (cross-correlation, weight (O, I, kh, kw), symmetric zero padding), BatchNorm in eval mode
  (eps 1e-3) and ReLU, in float64 on NHWC input."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
  out_c, _, kh, kw = weight.shape
  height = (x.shape[1] - kh) // stride + 1
  width = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], height, width, out_c))
  for i in range(height):
    for j in range(width):
      patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]  # (B, kh, kw, I)
      out[:, i, j, :] = np.einsum("bhwi,oihw->bo", patch, weight)
  out = (out - mean) / np.sqrt(var + 1e-3) * gamma + beta
  return np.maximum(out, 0.0)


@pytest.mark.slow
def test_network_runs_and_layers_follow_pytorch_conventions():
  variables = random_variables()
  state_dict = inception.state_dict_from_variables(variables)
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, size=(2, 75, 75, 3)).astype(
    np.float32
  )  # 75x75: the smallest input without resizing
  model = inception.FIDInceptionV3(resize_input=False)
  with jax.default_matmul_precision("highest"):
    (pool, logits), state = jax.jit(
      lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    )(variables, x)
  pool, logits = np.asarray(pool), np.asarray(logits)
  assert (
    np.all(np.isfinite(pool)) and np.all(np.isfinite(logits)) and np.all(pool >= 0)
  )  # ReLU, then mean
  assert pool.std() > 1e-3  # not collapsed
  # The classifier: logits = pool W^T + b with PyTorch's fc.weight (1008, 2048).
  np.testing.assert_allclose(
    logits,
    pool.astype(np.float64) @ state_dict["fc.weight"].T + state_dict["fc.bias"],
    rtol=1e-4,
    atol=1e-4,
  )
  # The first layer: a stride-2 3x3 convolution with the torch-layout weight, BatchNorm, ReLU.
  first = np.asarray(state["intermediates"]["Conv2d_1a_3x3"]["__call__"][0])
  p = "Conv2d_1a_3x3."
  expected = numpy_basic_conv(
    x,
    state_dict[p + "conv.weight"],
    state_dict[p + "bn.weight"],
    state_dict[p + "bn.bias"],
    state_dict[p + "bn.running_mean"],
    state_dict[p + "bn.running_var"],
    stride=2,
  )
  np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5)


def test_asymmetric_kernels_and_padding_follow_pytorch():
  """A (1, 7) kernel with padding (0, 3), as in InceptionC: height and width must not be swapped."""
  rng = np.random.default_rng(2)
  module = inception.BasicConv2d(5, (1, 7), padding=(0, 3))
  x = rng.normal(size=(2, 6, 9, 4)).astype(np.float32)
  weight = rng.normal(size=(5, 4, 1, 7)).astype(np.float32)  # torch layout (O, I, kh, kw)
  gamma, beta = rng.uniform(0.5, 1.5, 5), rng.normal(size=5) * 0.1
  mean, var = rng.normal(size=5) * 0.1, rng.uniform(0.5, 2, 5)
  variables = {
    "params": {
      "conv": {"kernel": weight.transpose(2, 3, 1, 0)},
      "bn": {"scale": gamma, "bias": beta},
    },
    "batch_stats": {"bn": {"mean": mean, "var": var}},
  }
  with jax.default_matmul_precision("highest"):
    got = module.apply(variables, x)
  np.testing.assert_allclose(
    got, numpy_basic_conv(x, weight, gamma, beta, mean, var, padding=(0, 3)), rtol=1e-4, atol=1e-5
  )


def test_average_pool_excludes_padding_like_tensorflow():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1, 5, 6, 2))
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ones = np.pad(np.ones_like(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  sums = sum(padded[:, i : i + 5, j : j + 6] for i in range(3) for j in range(3))
  counts = sum(ones[:, i : i + 5, j : j + 6] for i in range(3) for j in range(3))
  np.testing.assert_allclose(
    inception._avg_pool_3x3(jnp.asarray(x, jnp.float32)), sums / counts, rtol=1e-5
  )


def numpy_bilinear(x, size):
  """PyTorch's interpolate(mode='bilinear', align_corners=False) for upsampling, float64, NHWC: source
  coordinate (i + 0.5) * in / out - 0.5, clamped at 0, linear between the two neighbours (the last one clamped)."""

  def weights(n_in):
    src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    matrix = np.zeros((size, n_in))
    matrix[np.arange(size), low] += 1 - frac
    matrix[np.arange(size), high] += frac
    return matrix

  rows, cols = weights(x.shape[1]), weights(x.shape[2])
  return np.einsum("ih,bhwc,jw->bijc", rows, np.asarray(x, np.float64), cols)


@pytest.mark.slow
def test_resize_is_pytorch_bilinear_without_align_corners():
  rng = np.random.default_rng(4)
  for shape, size in (((2, 8, 8, 3), 19), ((1, 32, 32, 3), 299), ((1, 5, 7, 1), 16)):
    x = rng.uniform(-1, 1, size=shape).astype(np.float32)
    np.testing.assert_allclose(
      inception.resize_bilinear(jnp.asarray(x), size), numpy_bilinear(x, size), rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------------------------------------------
# Weight files


@pytest.mark.slow
def test_state_dict_round_trip_and_npz_loading(tmp_path):
  variables = random_variables(5)
  state_dict = inception.state_dict_from_variables(variables)
  assert state_dict["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)  # PyTorch layout
  assert state_dict["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert state_dict["fc.weight"].shape == (1008, 2048)
  path = str(tmp_path / "w.npz")
  np.savez(path, **state_dict, **{"fc.num_batches_tracked": np.array(0)})  # counters are ignored
  loaded = inception.load_variables(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, variables))


@pytest.mark.slow
def test_bad_weight_files_are_named(tmp_path):
  state_dict = inception.state_dict_from_variables(random_variables(6))
  cases = {
    "missing": {k: v for k, v in state_dict.items() if k != "Mixed_7c.branch_pool.conv.weight"},
    "unexpected": dict(state_dict, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}),
  }
  for name, sd in cases.items():
    path = str(tmp_path / f"{name}.npz")
    np.savez(path, **sd)
    with pytest.raises(inception.InceptionWeightsError, match=f"inception_weights={path}.*{name}"):
      inception.load_variables(path)
  misshaped = dict(state_dict, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
  np.savez(tmp_path / "shape.npz", **misshaped)
  with pytest.raises(inception.InceptionWeightsError, match=r"fc.weight has shape \(1000, 2048\)"):
    inception.load_variables(str(tmp_path / "shape.npz"))
  (tmp_path / "w.pth").write_bytes(b"x")
  with pytest.raises(inception.InceptionWeightsError, match="convert_inception_weights.py"):
    inception.load_variables(str(tmp_path / "w.pth"))
  with pytest.raises(inception.InceptionWeightsError, match="not a file"):
    inception.load_variables(str(tmp_path / "none.npz"))
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(inception.InceptionWeightsError, match="cannot read"):
    inception.load_variables(str(tmp_path / "bad.npz"))


# ----------------------------------------------------------------------------------------------------------------
# The converter, on files written by PyTorch


def load_converter():
  return runs.load_script("scripts/convert_inception_weights.py")


def expected_small_state_dict():
  """tests/fixtures/torch_state_dict_{zip,legacy}.pth were written by torch 2.13.0 from this recipe:

  base = torch.arange(10, dtype=torch.float32)
  sd = OrderedDict([('a.weight', torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7),
                    ('a.bias', torch.tensor([1.5, -2.25], dtype=torch.float64)),
                    ('b.count', torch.tensor(7, dtype=torch.int64)),
                    ('c.t', torch.arange(6, dtype=torch.float32).reshape(2, 3).t()),   # strided
                    ('d.view', base[3:7]), ('d.base', base)])                          # one shared storage
  torch.save(sd, 'torch_state_dict_zip.pth')
  torch.save(sd, 'torch_state_dict_legacy.pth', _use_new_zipfile_serialization=False)
  """
  base = np.arange(10, dtype=np.float32)
  return {
    "a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / np.float32(7),
    "a.bias": np.array([1.5, -2.25]),
    "b.count": np.array(7, np.int64),
    "c.t": np.arange(6, dtype=np.float32).reshape(2, 3).T,
    "d.view": base[3:7],
    "d.base": base,
  }


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_converter_reads_pytorch_files_without_torch(fmt):
  converter = load_converter()
  got = converter.read_state_dict(os.path.join(DATA, f"torch_state_dict_{fmt}.pth"))
  expected = expected_small_state_dict()
  assert list(got) == list(expected)  # the state dict's order
  for name, value in expected.items():
    assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
    np.testing.assert_array_equal(got[name], value)


def test_converter_refuses_code_in_the_pickle(tmp_path):
  converter = load_converter()

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo owned",))

  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("evil/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    converter.read_state_dict(path)
  legacy = io.BytesIO()
  for obj in (converter.LEGACY_MAGIC, 1001, {"little_endian": True}):
    pickle.dump(obj, legacy, protocol=2)
  pickle.dump({"w": Evil()}, legacy, protocol=2)
  (tmp_path / "evil_legacy.pth").write_bytes(legacy.getvalue())
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    converter.read_state_dict(str(tmp_path / "evil_legacy.pth"))


@pytest.mark.slow
def test_converter_checks_names_against_the_network(tmp_path):
  converter = load_converter()
  with pytest.raises(inception.InceptionWeightsError, match="not the FID Inception-v3 state dict"):
    converter.main([os.path.join(DATA, "torch_state_dict_zip.pth"), str(tmp_path / "out.npz")])
  assert not os.path.exists(tmp_path / "out.npz")
