"""Process plumbing, beside the mathematics: what a command line needs to run well on one CPU or many
hosts. Each module is imported where it is used (run.py imports `interrupts` before JAX):

  interrupts     Ctrl-C and SIGTERM at any moment: the process ends promptly, in one line
  cpu_flags      XLA flags that make convolutional models faster on a CPU (set before JAX starts)
  compile_cache  JAX's persistent compilation cache: where it lives, what it keeps, damaged entries
  distributed    several JAX processes as one job: start-up, waiting, a lost peer, config agreement
  fileio         writing files so that a kill at any moment leaves the old file or the new one
"""
