"""train(): the training loop every experiment shares.

Read top to bottom: open the run, restore or initialise the state, then
per step: one jitted train step; every log_every steps the averaged metrics;
every checkpoint_every a checkpoint; every sample_every a sample grid; a
signal, a preemption, a spent time budget or a NaN ends it (faults.py says
how). The step is gen_jax.train.step's, the keys are rng.stream's.
"""

import functools
import os
import signal
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from gen_jax import data, images
from gen_jax.configs import ConfigError
from gen_jax.train import checkpoint, faults, from_pretrained, rng, sharding, summary, workdir_lock
from gen_jax.train import step as step_lib
from gen_jax.train import workdir as workdir_lib
from gen_jax.train.load import record_builder
from gen_jax.train.run_setup import BuildFn, Run, open_run
from gen_jax.train.sampling import class_grid_labels, reference_points, save_samples_picture


def train(
  config,
  workdir: str,
  build: BuildFn,
  *,
  experiment: str | None = None,
  resume_unverified: bool = False,
) -> step_lib.TrainState:
  """Trains (or resumes) the experiment in `workdir`; returns the final state.

  Faults, and what each costs:
    * Resuming picks the newest checkpoint that restores completely
      (checkpoint.restore_newest): a save cut short by a kill -9 is deleted and
      an unreadable newer step set aside, both reported. So a kill at any
      moment loses only the steps since the last checkpoint.
    * SIGTERM or SIGINT (one process): the current step finishes, a checkpoint
      is saved at it and TrainingInterrupted is raised; a second signal goes to
      the previous handler at once; the previous handlers are restored on
      return. With several processes, JAX's preemption service turns SIGTERM
      on any host into a step at which all of them save and stop.
    * A NaN/inf loss or gradient raises NonFiniteError naming the step, and
      nothing after the last checkpoint is saved. The check is the step's
      HALT metric, computed inside the jitted step and read only where the
      loop syncs anyway (logs, samples, checkpoints). With
      train.skip_nonfinite, such an update is skipped instead
      (optax.apply_if_finite), counted in the metric skipped_nonfinite_steps,
      and only MAX_CONSECUTIVE_NONFINITE in a row stop training.
    * train.max_seconds > 0 is a wall-clock budget for this launch's training
      loop. The clock starts once the first step is compiled (so compiling it
      does not count; the loop's logs, checkpoints and sample grids do). Once
      it is spent, the step in flight finishes, is logged, checkpointed and
      sampled as a last step would be, and train() returns normally, saying
      so. The clock is read after the previous step has finished on the
      device, so at most one step runs past the budget. A resumed run gets a
      new budget.
    * A config that differs from the workdir's config.json outside
      RESUMABLE_CHANGES (or a missing config.json, unless resume_unverified),
      another `experiment` than the workdir records, data of another shape, a
      workdir that cannot be written, a disk too full for the checkpoints or
      a sampler the model cannot run raise ConfigError at start-up, before
      anything is written.
    * A second training in the same workdir is refused at start-up
      (workdir_lock.WorkdirLockedError names the running one), before it
      touches anything; the lock of a killed training is taken over.
    * A full disk raises fileio.DiskFullError and an exhausted memory
      faults.OutOfMemoryError, one line each, naming the newest checkpoint;
      an unfinished save is deleted.
    * A kill during the last step's sample grid: the next run draws it.
  """
  run = open_run(
    config,
    workdir,
    build,
    mode="train",
    experiment=experiment,
    resume_unverified=resume_unverified,
  )
  try:
    # One training per workdir: process 0 locks it for all, before anything in it is touched.
    lock = workdir_lock.acquire(workdir) if run.is_writer else None
  except BaseException:
    run.checkpoints.close()
    raise
  try:
    with faults.resource_errors("training", newest_checkpoint=lambda: _newest(workdir)):
      return _train(run, lock, experiment, build)
  finally:
    if lock is not None:
      lock.release()


def _newest(workdir: str) -> str:
  steps = checkpoint.saved_steps(workdir)
  where = checkpoint.checkpoint_dir(workdir)
  return f"the newest checkpoint is step {steps[-1]} in {where}" if steps else "no checkpoint saved"


def _train(run: Run, lock, experiment: str | None, build: BuildFn) -> step_lib.TrainState:
  """train() in a locked workdir."""
  config, workdir = run.config, run.workdir
  tc = config.train
  if run.is_writer:
    devices, processes = jax.device_count(), jax.process_count()
    print(
      f"Training on {devices} device{'s' * (devices > 1)} "
      f"({jax.devices()[0].platform}) in {processes} "
      f"process{'es' * (processes > 1)}; global batch {config.data.batch_size}"
      + (f"; train state sharded {config.mesh.fsdp} ways (FSDP)" if config.mesh.fsdp > 1 else "")
    )

  # -- Restore the newest checkpoint, or initialise ----------------------------
  report = print if run.is_writer else (lambda message: None)
  if lock is not None and workdir_lock.stale_note(lock):
    report(workdir_lock.stale_note(lock))
  state, start_step = checkpoint.restore_newest(
    run.checkpoints, run.abstract_state, report=report, is_writer=run.is_writer
  )
  if start_step and start_step > tc.num_steps:
    raise ConfigError(
      f"workdir={workdir} holds a checkpoint at step {start_step}, past config.train.num_steps="
      f"{tc.num_steps}: nothing to train; raise num_steps to go on, or use another workdir"
    )
  if run.is_writer:  # Only now: the start-up checks compared against the old files.
    workdir_lib.remove_temporary_files(workdir, report)
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_data_spec(workdir, run.dataset)
    if experiment:
      workdir_lib.write_experiment(workdir, experiment)
    record_builder(workdir, build)  # so load_trained rebuilds the model from the workdir
    # Steps logged after the checkpoint we resume from are about to be redone.
    summary.drop_records_after(workdir, start_step or 0)
  if state is None:
    init = jax.jit(
      functools.partial(step_lib.init_state, run.model, run.tx), out_shardings=run.state_shardings
    )
    if config.get("pretrained"):  # Fine-tuning: params and EMA start from the folder's weights.
      init = lambda key: from_pretrained.pretrained_state(config, run.model, run.tx, run.mesh)
    state, start_step = init(rng.stream(config.seed, "init")), 0
  else:
    logging.info("Resuming from checkpoint at step %d", start_step)
    if run.is_writer:
      print(f"Resuming {workdir} from step {start_step}")
  logging.info("Parameters: %s", f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")

  # -- The step, the data, the logs and the sample grid --------------------------
  train_step = step_lib.jit_train_step(run.train_step, run.mesh, run.state_shardings)
  train_key = rng.stream(config.seed, "train")
  batches = data.prefetch(
    data.train_iterator(
      run.dataset,
      config.seed,
      config.data.batch_size,
      start_step,
      jax.process_index(),
      jax.process_count(),
    )
  )
  log = MetricLog(run, start_step)
  grid = SampleGrid(run, log.writer)

  # -- The loop ----------------------------------------------------------------
  step, last_saved, stopped_by, out_of_time = start_step, start_step, None, False
  max_seconds, trained_seconds = float(tc.max_seconds), 0.0
  clock_start, previous_halt = None, None  # clock: perf_counter() once the first step is compiled
  signals = faults.StopOnSignal(announce=run.is_writer, enabled=jax.process_count() == 1)
  try:
    with signals:
      if start_step == tc.num_steps and not os.path.exists(grid.path(start_step)):
        report(f"Drawing the sample grid of step {start_step}, which the last run did not finish")
        grid.draw(state.ema_params, start_step)
      for step in range(start_step + 1, tc.num_steps + 1):
        batch = sharding.shard_batch(next(batches), run.mesh)
        state, metrics = train_step(state, batch, train_key)
        if clock_start is None:  # The call compiled the step (the first one, and it runs on).
          clock_start = time.perf_counter()
        log.append(step, metrics)
        is_last = step == tc.num_steps
        if max_seconds and not is_last:
          # Wait for the previous step, not this one: the device stays busy, and the clock
          # counts finished work, so at most this step runs past the budget.
          jax.block_until_ready(previous_halt)
          trained_seconds = time.perf_counter() - clock_start
          out_of_time = is_last = faults.out_of_time(
            trained_seconds, max_seconds, step, tc.log_every
          )
        previous_halt = metrics[step_lib.HALT]
        stopping = not is_last and (
          signals.signal_number is not None or faults.reached_preemption(step)
        )
        log_now = step % tc.log_every == 0 or is_last or stopping
        sample_now = (step % tc.sample_every == 0 or is_last) and not stopping
        save_now = step % tc.checkpoint_every == 0 or is_last or stopping
        if log_now or sample_now or save_now:  # Syncs with the device here, not every step.
          log.check_finite(last_saved)
        if log_now:
          log.write(step)
        if save_now:  # Before sampling: a kill during a long sampler then costs nothing.
          checkpoint.save(run.checkpoints, step, state)
          last_saved = step
        if sample_now:
          grid.draw(state.ema_params, step)
        if not stopping and not is_last and signals.signal_number is not None:
          # The signal came while this step logged, saved or sampled: stop after it all the same.
          stopping = True
          log.check_finite(last_saved)
          if log.pending:
            log.write(step)
          if not save_now:
            checkpoint.save(run.checkpoints, step, state)
            last_saved = step
        if stopping:
          stopped_by = signals.signal_number or signal.SIGTERM  # (preemption: SIGTERM)
          break
        if out_of_time:
          break
  finally:
    log.close()
    run.checkpoints.close()

  # -- How it ended --------------------------------------------------------------
  if stopped_by is None and signals.signal_number is not None:
    stopped_by = signals.signal_number  # during the last step's grid: saved, and still a stop
  if jax.process_count() > 1:  # Each process reads only its slice of every global batch.
    print(
      f"Process {jax.process_index()}: read {run.dataset.examples_read} examples of "
      f"{run.dataset.name} for steps {start_step + 1}..{step} (prefetched ones included)",
      flush=True,
    )
  if stopped_by is not None:
    raise faults.TrainingInterrupted(step, stopped_by, workdir)
  if run.is_writer and step == tc.num_steps:
    print(f"Done: {tc.num_steps} steps in {workdir}{grid.named(tc.num_steps)}")
  if run.is_writer and out_of_time:
    print(
      f"Stopped on the time budget (config.train.max_seconds={max_seconds:g}) at step {step} "
      f"of {tc.num_steps} after {trained_seconds:.1f} s of training; checkpoint saved in "
      f"{checkpoint.checkpoint_dir(workdir)}{grid.named(step)}"
    )
  return state


class MetricLog:
  """The metrics of the steps since the last log: the non-finite check, the averages
  written to metrics.jsonl and TensorBoard (process 0), and the progress bar."""

  def __init__(self, run: Run, start_step: int):
    self.run = run
    self.pending = []  # (step, metrics), on the device until check_finite fetches them
    self.writer = summary.MetricWriter(run.workdir) if run.is_writer else None
    self.progress = tqdm(
      total=run.config.train.num_steps,
      initial=start_step,
      desc="train",
      disable=not run.is_writer,
      dynamic_ncols=True,
      mininterval=1.0,
    )
    self._logged_step, self._logged_time = start_step, time.time()

  def append(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))
    self.progress.update(1)

  def check_finite(self, last_saved: int) -> None:
    """Raises NonFiniteError if a pending step set HALT. Fetches the metrics: a sync."""
    self.pending = jax.device_get(self.pending)
    bad_step = faults.first_halted_step(self.pending)
    if bad_step is not None:
      raise faults.NonFiniteError(
        faults.nonfinite_message(
          bad_step,
          self.pending,
          last_saved,
          self.run.workdir,
          self.run.config.train.skip_nonfinite,
        )
      )

  def write(self, step: int) -> None:
    """Writes the pending steps' averages (NaNs of skipped steps left out) as step `step`."""
    host = [metrics for _, metrics in jax.device_get(self.pending)]
    self.pending = []
    values = {}
    for name in host[0]:
      series = np.asarray([m[name] for m in host])
      if name == step_lib.HALT:
        continue
      if name == "skipped_nonfinite_steps":  # a running total
        values[name] = float(series[-1])
      else:
        finite = series[np.isfinite(series)]
        values[name] = float(np.mean(finite)) if finite.size else float("nan")
    now = time.time()
    values["steps_per_sec"] = (step - self._logged_step) / max(now - self._logged_time, 1e-9)
    self._logged_step, self._logged_time = step, now
    self.progress.set_postfix(loss=f"{values['loss']:.4f}")
    if self.writer:
      self.writer.write_scalars(step, values)

  def close(self) -> None:
    self.progress.close()
    if self.writer:
      self.writer.close()


class SampleGrid:
  """The picture of config.sample.num_samples samples drawn while training: one row per
  class for a class-conditional model; a scatter plot over data points for 2-D data."""

  def __init__(self, run: Run, writer):
    config = run.config
    self.run, self.writer = run, writer
    self.directory = os.path.join(run.workdir, "samples")
    num_samples, num_classes = config.sample.num_samples, getattr(run.model, "num_classes", 0)
    self.labels, self.rows = (
      class_grid_labels(num_samples, num_classes) if num_classes else (None, None)
    )
    self.draw_fn = run.make_sampler(
      num_samples,
      config.sample.sampler,
      config.sample.num_steps,
      config.sample.options,
      config.sample.guidance_scale,
    )
    self.reference = reference_points(config)
    if run.is_writer:
      os.makedirs(self.directory, exist_ok=True)

  def path(self, step: int) -> str:
    return os.path.join(self.directory, f"step_{step:07d}.png")

  def named(self, step: int) -> str:
    """'; samples: <path>' if the grid of `step` is on disk, else ''."""
    return f"; samples: {self.path(step)}" if os.path.exists(self.path(step)) else ""

  def draw(self, params, step: int) -> None:
    """Draws and writes the grid of `step`; non-finite samples are reported, not drawn."""
    key = rng.stream(self.run.config.seed, "sample_grid", step)
    samples = self.draw_fn(params, key, self.labels)
    bad = int(np.sum(~np.all(np.isfinite(samples.reshape(len(samples), -1)), axis=1)))
    if bad and self.run.is_writer:
      print(
        f"The sample grid of step {step} is not written: {bad} of {len(samples)} samples hold "
        f"NaN/inf (config.sample: sampler {self.run.config.sample.sampler}, guidance "
        f"{self.run.config.sample.guidance_scale})"
      )
    elif self.run.is_writer:
      save_samples_picture(self.path(step), samples, self.run.kind, self.reference, self.rows)
      if self.run.kind == "image":
        self.writer.write_image(step, "samples", images.grid(images.to_uint8(samples)))
