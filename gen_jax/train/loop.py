"""train(): the training loop every experiment shares.

Read top to bottom: open the run (run_setup), lock the workdir, restore or
initialise the state (resume), then per step: one jitted train step; on their
schedules the averaged metrics (summary.MetricLog), a checkpoint and a sample
grid (sampling.SampleGrid); the stopper (faults.Stopper) says when a signal, a
preemption, the time budget or the last step ends it, and the step it ends at
is logged and saved once, after the loop. The step is gen_jax.train.step's,
the keys are rng.stream's.
"""

import jax

from gen_jax import data
from gen_jax.runtime import cpu_flags
from gen_jax.train import checkpoint, faults, resume, rng, sampling, sharding, summary, workdir_lock
from gen_jax.train import step as step_lib
from gen_jax.train.run_setup import BuildFn, Run, open_run


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
  config, tc = run.config, run.config.train
  if run.is_writer:
    print(_devices_line(config))
  state, start_step = resume.restore_or_init(run, experiment, lock, build)
  train_step = step_lib.jit_train_step(run.train_step, run.mesh, run.state_shardings)
  train_key = rng.stream(config.seed, "train")
  process, processes = jax.process_index(), jax.process_count()
  batches = data.prefetch(
    data.train_iterator(
      run.dataset, config.seed, config.data.batch_size, start_step, process, processes
    )
  )
  log = summary.MetricLog(
    run.workdir,
    tc.num_steps,
    start_step,
    is_writer=run.is_writer,
    skip_nonfinite=tc.skip_nonfinite,
  )
  grid = sampling.SampleGrid(run, log.writer)
  stopper = faults.Stopper(tc.num_steps, tc.max_seconds, tc.log_every, announce=run.is_writer)
  sync = _Sync(run, log, grid, saved=start_step)
  one_at_a_time = cpu_flags.steps_must_not_overlap()  # simulated devices: else a deadlock
  step = start_step
  try:
    with stopper:
      if start_step == tc.num_steps:  # A kill during the last grid: draw it now.
        grid.draw_if_missing(state.ema_params, start_step)
      for step in range(start_step + 1, tc.num_steps + 1):
        try:
          host_batch = next(batches)
        except data.DataError:  # e.g. a data worker killed: keep the steps done, then the line
          sync(step - 1, state, log=True, save=True, grid=False)
          raise
        batch = sharding.shard_batch(host_batch, run.mesh)
        state, metrics = train_step(state, batch, train_key)
        if one_at_a_time:
          jax.block_until_ready((state, metrics))
        log.append(step, metrics)
        if stopper.should_stop(step, metrics):  # the last step, the time budget, a signal...
          break
        sync(
          step,
          state,
          log=step % tc.log_every == 0,
          save=step % tc.checkpoint_every == 0,
          grid=step % tc.sample_every == 0,
        )
        if stopper.signalled():  # It came while this step logged, saved or drew: stop here too.
          break
      # The step training ends at, however it ends: logged and saved here, once (and drawn if
      # it ends as a last step); after a signal during its scheduled work, what that left undone.
      sync(step, state, log=True, save=True, grid=stopper.ends_as_last_step)
  finally:
    batches.close()  # the prefetch thread, then the data's worker processes, on every exit path
    run.dataset.close()
    log.close()
    run.checkpoints.close()
  _say_how_it_ended(run, stopper, grid, start_step, step)
  return state


class _Sync:
  """A step's logs, checkpoint and sample grid, each done at most once per step. The loop's one
  sync with the device: the non-finite check (NonFiniteError, nothing saved) comes first."""

  def __init__(self, run: Run, log: summary.MetricLog, grid: sampling.SampleGrid, saved: int):
    self.run, self.log, self.grid = run, log, grid
    self.saved = saved  # the step of the newest checkpoint

  def __call__(self, step: int, state, *, log: bool, save: bool, grid: bool) -> None:
    log, save = log and bool(self.log.pending), save and self.saved != step
    if log or save or grid:
      self.log.check_finite(self.saved)
    if log:
      self.log.write(step)
    if save:  # Before sampling: a kill during a long sampler then costs nothing.
      checkpoint.save(self.run.checkpoints, step, state)
      self.saved = step
    if grid:
      self.grid.draw(state.ema_params, step)


def _devices_line(config) -> str:
  devices, processes = jax.device_count(), jax.process_count()
  return (
    f"Training on {devices} device{'s' * (devices > 1)} "
    f"({jax.devices()[0].platform}) in {processes} "
    f"process{'es' * (processes > 1)}; global batch {config.data.batch_size}"
    + (f"; train state sharded {config.mesh.fsdp} ways (FSDP)" if config.mesh.fsdp > 1 else "")
  )


def _say_how_it_ended(run: Run, stopper: faults.Stopper, grid, start_step: int, step: int):
  """The lines (and TrainingInterrupted) that say where training stopped and why."""
  tc, workdir = run.config.train, run.workdir
  if jax.process_count() > 1:  # Each process reads only its slice of every global batch.
    print(
      f"Process {jax.process_index()}: read {run.dataset.examples_read} examples of "
      f"{run.dataset.name} for steps {start_step + 1}..{step} (prefetched ones included)",
      flush=True,
    )
  if stopper.stopped_by is not None:
    raise faults.TrainingInterrupted(step, stopper.stopped_by, workdir)
  if run.is_writer and step == tc.num_steps:
    print(f"Done: {tc.num_steps} steps in {workdir}{grid.named(tc.num_steps)}")
  if run.is_writer and stopper.why == "time":
    print(
      f"Stopped on the time budget (config.train.max_seconds={stopper.max_seconds:g}) at step "
      f"{step} of {tc.num_steps} after {stopper.trained_seconds:.1f} s of training; checkpoint "
      f"saved in {checkpoint.checkpoint_dir(workdir)}{grid.named(step)}"
    )
