"""The shared decoder layer: models, vocabulary, checkpoints, decoding, metrics, losses.

Used by both `pipeline.train` and `pipeline.infer`; imports nothing above it.
"""
