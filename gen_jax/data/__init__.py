"""Host-side data for training and evaluation (numpy only; no JAX, no TensorFlow).

Every training batch is a pure function of ``(seed, step)``, so a run resumed at step k sees exactly the batches
it would have seen without the interruption:

* finite data is read epoch-wise without replacement: global position ``p = step * batch_size + i`` is example
  ``perm_e[p % N]`` of epoch ``e = p // N``, where ``perm_e = np.random.default_rng([seed, e]).permutation(N)``;
* random horizontal flips (train split only) come from ``np.random.default_rng([seed, step, 1])``;
* toy 2-D data is infinite: every step draws fresh points from ``np.random.default_rng([seed, step])``.

Multi-process: the *global* batch is cut into ``process_count`` contiguous slices and each process builds only its
own slice; randomness is always drawn for the global batch, so the slices concatenate to the global batch.

Values: images come back as float32 HWC in [-1, 1], ``x / (max_value / 2) - 1``. For uint8 data max_value = 255
(``x / 127.5 - 1``); scikit-learn's digits (0..16) are first put on the 8-bit grid, round(v * 255 / 16).
``Dataset.pixel_levels`` is 256 for images (for discretized likelihoods). Points come back as float32 unchanged.

Sources (``data.source``): 'digits', 'toy2d', 'tfds', 'npz', 'folder'; see ``load_dataset``.

Modules: ``dataset`` (a split read by index; batches as a function of (seed, step)), ``toy2d`` (the infinite toy
distributions), ``validation`` (what arrays and image files are accepted), ``sources`` (one function per
``data.source`` and ``load_dataset``), ``iteration`` (the endless training stream and its prefetch thread).
"""

from gen_jax.data.dataset import Batch, DataError, Dataset, Fetch
from gen_jax.data.iteration import prefetch, train_iterator
from gen_jax.data.sources import IMAGE_EXTENSIONS, SOURCES, SPLITS, load_dataset
from gen_jax.data.toy2d import TOY2D_NAMES, TOY2D_TEST_SIZE, Toy2DDataset, sample_toy2d

__all__ = [
  "IMAGE_EXTENSIONS",
  "SOURCES",
  "SPLITS",
  "TOY2D_NAMES",
  "TOY2D_TEST_SIZE",
  "Batch",
  "DataError",
  "Dataset",
  "Fetch",
  "Toy2DDataset",
  "load_dataset",
  "prefetch",
  "sample_toy2d",
  "train_iterator",
]
