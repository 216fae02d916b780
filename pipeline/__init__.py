"""captioner: a two-stage image-captioning pipeline.

Stage one (`pipeline.extract`) runs a frozen torchvision backbone (ResNet50 by default,
`pipeline.backbones`) over every image once and writes a (N, R, C) grid per image to HDF5
(ResNet50: (N, 49, 2048)). Stage two (`pipeline.train`) trains an
attention decoder (an LSTM or a Transformer, `pipeline.decoder`) from that file alone. The
stages meet only at the HDF5 contract in `pipeline.contract` (documented in features/README.md).
"""

__version__ = "0.1.0"
