"""`captioner evaluate` (a split from the cache: scores, reports, comparisons) and `captioner
caption` (new images or feature-file rows: captions, attention maps, HTML pages).

Decoding and the vocabulary live in `pipeline.decoder`, the COCO metrics in `pipeline.metrics`,
the splits and the split loss in `pipeline.dataset`; new images are encoded with
`pipeline.extract`. Never imports `pipeline.train`.
"""
