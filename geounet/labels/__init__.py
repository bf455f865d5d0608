"""Training labels: vector files rasterized per window in the raster's CRS, mask rasters, and
the set of (image, labels) pairs a training run reads.

Modules, from the bottom up:

- :mod:`~geounet.labels.spec`: :class:`~geounet.labels.spec.LabelSpec` (class field, class
  names, buffer sizes), the class ids it gives features, and the class-id constants.
- :mod:`~geounet.labels.crs`: CRS and grid helpers (parse and name a CRS, bounds, metres).
- :mod:`~geounet.labels.geometry`: clean single parts, reprojecting, buffering, merging.
- :mod:`~geounet.labels.rasterize`: :class:`~geounet.labels.rasterize.RasterLabels`, one
  raster's features burnt window by window.
- :mod:`~geounet.labels.vector`: :func:`~geounet.labels.vector.read_labels` and
  :class:`~geounet.labels.vector.Labels`, vector files read once and reprojected per raster CRS.
- :mod:`~geounet.labels.mask_file`: one mask raster, its grid and its values as class ids.
- :mod:`~geounet.labels.mask_windows`: :class:`~geounet.labels.mask_windows.RasterMaskLabels`,
  one raster's mask read window by window.
- :mod:`~geounet.labels.masks`: :class:`~geounet.labels.masks.MaskLabels`, masks matched to
  images.
- :mod:`~geounet.labels.sets`: :func:`~geounet.labels.sets.read_label_sources` and
  :class:`~geounet.labels.sets.LabelSet`, any mix of vector files, masks, globs and folders.

geopandas/shapely/pyproj/rasterio/scipy.ndimage only; no torch.
"""
