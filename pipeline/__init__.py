"""captioner: a two-stage image-captioning pipeline.

Stage one (`pipeline.extract`) runs a frozen ResNet50 over every image once and
writes a (N, 49, 2048) grid per image to HDF5. Stage two (`pipeline.train`) trains an
attention decoder (an LSTM or a Transformer, `pipeline.decoder`) from that file alone. The
stages meet only at the HDF5 contract in `pipeline.contract` (documented in features/README.md).
"""

__version__ = "0.1.0"
