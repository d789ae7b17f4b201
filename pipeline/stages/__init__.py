"""One module per stage, all with the same shape: the unit contract, `pipeline.unit.Stage` (NAME, VERSION,
plan(cfg, planned), run(ctx), and optionally summary(stage_dir, units) and preflight(units, done_inputs)).

A unit sees only its `params` (hashed into its fingerprint together with its inputs' fingerprints),
its `settings` (read but declared not to change results: batch sizes that do not change results,
num_proc, log/checkpoint intervals, trackers) and its inputs' directories. It never sees the whole
config, so nothing can change its output without changing its fingerprint (tests/test_fingerprints.py
checks every config field). `multiprocess=True` marks units that may run in several processes under
`accelerate launch` (run() then executes in every process; the main one writes shared files);
`resumable=True` keeps the work dir across a kill (the unit checkpoints inside it). Bad input raises
pipeline.errors.UserError with one line naming the key, file or value and what would be valid.

Stages are siblings: they import the contract (pipeline/unit.py), pipeline/stages/artifacts.py (unit keys,
readers of other stages' outputs) and the libraries (data/, lm/, analysis/), never each other and never
orchestration (tests/test_layers.py).
"""
