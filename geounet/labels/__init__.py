"""Training labels: vector files rasterized per window in the raster's CRS, mask rasters, and
the set of (image, labels) pairs a training run reads.
"""
