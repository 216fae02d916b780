"""Stage one: images -> frozen ResNet50 -> (N, 49, 2048) grids in HDF5 (see pipeline.contract)."""
