"""The one training loop (loop.py: `train_model`) and its parts: data position (data.py), kill-safe
checkpoints (checkpoint.py), the run's state and training clock (state.py), loss, optimiser and schedule,
MFU, signals (exit 75), logs.

Used by the train stage (students) and the teacher stage alike:

    from pipeline.lm.training.loop import train_model
"""
