"""Stage one: images -> frozen backbone -> (N, R, C) grids in HDF5 (see pipeline.contract)."""
