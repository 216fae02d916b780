"""Stage two's data: captions with frozen splits joined to rows of the feature cache, batched.

Used by both `pipeline.train` and `pipeline.infer`; imports `pipeline.decoder` and below.
"""
