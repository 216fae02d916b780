"""Stage two's training (`captioner train`): the epoch loop and optimizer step, the objectives
(cross-entropy, SCST; its loss and reward), the trainer (validation, checkpoints), run folders.

Splits, feature loading and batches live in `pipeline.dataset`; the decoders, vocabulary,
decoding and sampling in `pipeline.decoder`; the COCO metrics (validation) and the CIDEr-D
reward (SCST) in `pipeline.metrics`. Never imports `pipeline.infer`.
"""
