"""The shared decoder layer: models, vocabulary, checkpoints, decoding, losses.

Used by both `pipeline.train` and `pipeline.infer`; imports `pipeline.captions` and the ground
modules, nothing above.
"""
