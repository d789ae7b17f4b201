"""The training loop and its parts: data position, checkpoints, loss, optimiser, MFU, signals, logs.

Public entry: `pipeline.trainer.train_model`.
"""
