"""One module per stage, all with the same shape (the unit contract).

    NAME = "train"
    VERSION = 1                                  # bump when the stage's output changes meaning
    def plan(cfg, planned) -> list[Unit]         # every unit of this stage; earlier stages' via planned.units(stage)
    def run(ctx) -> dict                         # one unit's work, written only under ctx.out; returns metrics
    def summary(stage_dir, units) -> dict        # optional: {file name: text} of stage-level tables, from the done units

A unit sees only its `params` (hashed into its fingerprint together with its inputs' fingerprints),
its `settings` (read but declared not to change results: batch sizes that do not change results,
num_proc, log/checkpoint intervals, trackers) and its inputs' directories. It never sees the whole
config, so nothing can change its output without changing its fingerprint (tests/test_fingerprints.py
checks every config field). `multiprocess=True` marks units that may run in several processes under
`accelerate launch` (run() then executes in every process; the main one writes shared files);
`resumable=True` keeps the work dir across a kill (the unit checkpoints inside it). Bad input raises
pipeline.errors.UserError with one line naming the key, file or value and what would be valid.

Stages are siblings: they import pipeline/stages/artifacts.py (unit keys, readers of other stages'
outputs) and the libraries (data/, lm/, analysis/), never each other (tests/test_layers.py).
"""
