"""One module per stage, all with the same shape (the unit contract).

    NAME = "train"
    VERSION = 1                                  # bump when the stage's output changes meaning
    def plan(cfg, planned) -> list[Unit]         # expand the config into units; earlier stages' units via planned
    def run(ctx) -> dict                         # one unit's work, written only under ctx.out; returns metrics
    def summarize(run_dir, cfg) -> None          # optional: rebuild a stage-level table from finished units

A unit's `params` is the config slice it reads (hashed into its fingerprint together with its inputs'
fingerprints): include what changes the output, nothing else. `launcher="accelerate"` marks units that
may run in several processes (run() then executes in every process; the main one writes shared files);
`resumable=True` keeps the work dir across a kill (the unit checkpoints inside it). Bad input raises
pipeline.errors.UserError with one line naming the key, file or value and what would be valid.
"""
