"""Input pipeline throughput: gen_jax's TFDS batch stream on a CIFAR-shaped ArrayRecord data set, in images/s.

  python benchmarks/input_pipeline.py                          # 50,000 images, workers 0 (in-thread), 2
  taskset -c 0 python benchmarks/input_pipeline.py --workers=0  # one core
  python benchmarks/input_pipeline.py --workers=0,4,8 --cpus=0-8 --data_dir=/tmp/cifar_shaped

Writes (once, into --data_dir) a data set that TFDS reads as `cifar10` 3.0.2, without TensorFlow: random
32x32x3 uint8 images and labels 0..9, each example encoded by the cifar10 builder's own features (the image as
a PNG through PIL, as `tfds.features.Image` does for a PIL image) and serialized as a tf.train.Example by
`tfds.core.example_serializer`, in one ArrayRecord shard per split (`cifar10-train.array_record-00000-of-00001`,
options "group_size:1", as TFDS writes them), with the builder's `dataset_info.json` and `features.json`.
`ddpm_cifar` reads it unchanged with `--config.data.tfds_data_dir=DIR`. Random pixels make PNGs that do not
compress (3.3 KB an image, real CIFAR-10 about 2.4 KB); decoding costs about the same.

Then times what the training loop consumes: `data.prefetch(data.train_iterator(...))` over the train split
with ddpm_cifar's settings (batch 128, random flips), float32 batches in [-1, 1], for each --workers count
(config.data.num_workers: 0 reads and decodes in the prefetch thread; k > 0 in k worker processes), and prints
images/s, images/s per core, and what the training step consumes on the target accelerators.
"""

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gen_jax import data

BATCH_SIZE = 128  # ddpm_cifar's
# What ddpm_cifar's training step consumes, images/s. The DDPM paper (Ho et al. 2020, appendix B): the CIFAR-10
# model trains at 21 steps/s at batch 128 on a TPU v3-8. GPUs: 36.3 GFLOP per image for forward + backward
# (torch's flop counter on the 35.7M-parameter U-Net, /work/shared/STACK.md) at 40% of the bfloat16 datasheet
# peak (dense), the utilisation a well-fed convolutional U-Net reaches on these GPUs.
FLOP_PER_IMAGE = 36.3e9
GPU_UTILISATION = 0.4
CONSUMERS = {
  "TPU v3-8 (DDPM paper: 21 steps/s x 128)": 21 * 128,
  "A100 (312 TFLOP/s bf16, 40%)": 312e12 * GPU_UTILISATION / FLOP_PER_IMAGE,
  "H100 / H200 (989 TFLOP/s bf16, 40%)": 989e12 * GPU_UTILISATION / FLOP_PER_IMAGE,
}


def write_tfds_images(
  data_dir: str, name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> str:
  """Writes {split: (uint8 images (N, H, W, C), int labels (N,))} as TFDS dataset `name` in ArrayRecord,
  without TensorFlow, so `tfds.data_source(name, data_dir=data_dir)` reads it; returns its folder.

  The features, version and file names are those of the registered builder `name` (e.g. cifar10 3.0.2: id,
  image, label); each example is encoded by those features (PNG through PIL) and serialized as a
  tf.train.Example, one shard per split. The dataset_info.json is written last: a half-written folder has
  none, and TFDS does not see it.
  """
  import PIL.Image
  import tensorflow_datasets as tfds
  from array_record.python import array_record_module
  from tensorflow_datasets.core import example_serializer, naming

  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  info, features = builder.info, builder.info.features
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  os.makedirs(builder.data_dir, exist_ok=True)
  split_infos = []
  for split, (images, labels) in splits.items():
    template = naming.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name=name, split=split, filetype_suffix="array_record"
    )
    path = os.fspath(template.sharded_filepath(shard_index=0, num_shards=1))
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    num_bytes = 0
    for i, (image, label) in enumerate(zip(images, labels)):
      example = {
        "image": PIL.Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1 else image)
      }
      example["label"] = int(label)
      if "id" in features:
        example["id"] = f"{split}_{i:05d}"
      record = serializer.serialize_example(features.encode_example(example))
      writer.write(record)
      num_bytes += len(record)
    writer.close()
    split_infos.append(
      tfds.core.SplitInfo(
        name=split, shard_lengths=[len(images)], num_bytes=num_bytes, filename_template=template
      )
    )
  info.set_splits(tfds.core.SplitDict(split_infos))
  info.write_to_directory(builder.data_dir)
  return os.fspath(builder.data_dir)


def cifar_shaped(num_train: int, num_test: int, seed: int = 0) -> dict:
  """Random CIFAR-10-shaped splits: {split: (uint8 (N, 32, 32, 3), labels (N,) in 0..9)}."""
  rng = np.random.default_rng(seed)
  make = lambda n: (
    rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, n),
  )
  return {"train": make(num_train), "test": make(num_test)}


def images_per_second(data_dir: str, num_workers: int, seconds: float) -> float:
  """Images/s of the training stream (prefetched, as the loop reads it) over about `seconds`."""
  import ml_collections

  config = ml_collections.ConfigDict(
    dict(
      source="tfds",
      name="cifar10",
      tfds_data_dir=data_dir,
      batch_size=BATCH_SIZE,
      random_flip=True,
      num_workers=num_workers,
    )
  )
  dataset = data.load_dataset(config, "train")
  batches = data.prefetch(data.train_iterator(dataset, 0, BATCH_SIZE, 0))
  next(batches)  # starts the workers, if any
  start, num_batches = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    next(batches)
    num_batches += 1
  return num_batches * BATCH_SIZE / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="/tmp/gen_jax_cifar_shaped")
  parser.add_argument("--num_train", type=int, default=50_000)
  parser.add_argument("--workers", default="0,2", help="config.data.num_workers values to time")
  parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
  parser.add_argument("--cpus", default=None, help="run on these CPUs only, e.g. 0 or 0-3 (Linux)")
  args = parser.parse_args()
  if args.cpus:
    low, _, high = args.cpus.partition("-")
    os.sched_setaffinity(0, range(int(low), int(high or low) + 1))  # inherited by the workers
  cores = len(os.sched_getaffinity(0))

  info = os.path.join(args.data_dir, "cifar10", "3.0.2", "dataset_info.json")
  if not os.path.exists(info):
    start = time.perf_counter()
    write_tfds_images(args.data_dir, "cifar10", cifar_shaped(args.num_train, args.num_train // 5))
    print(
      f"wrote {args.num_train} + {args.num_train // 5} images in {time.perf_counter() - start:.0f} s"
    )
  print(
    f"{args.data_dir}: cifar10 as TFDS ArrayRecord; {cores} CPU core(s) allowed; batch {BATCH_SIZE}"
  )
  print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print("\n| config.data.num_workers | images/s | images/s per core used |")
  print("|---:|---:|---:|")
  for num_workers in (int(w) for w in args.workers.split(",")):
    rate = images_per_second(args.data_dir, num_workers, args.seconds)
    used = min(cores, max(num_workers, 1))  # the in-thread reader keeps one core busy
    print(f"| {num_workers} | {rate:,.0f} | {rate / used:,.0f} |", flush=True)
  print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print("\n| what ddpm_cifar's training step consumes | images/s |")
  print("|---|---:|")
  for name, rate in CONSUMERS.items():
    print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
  main()
