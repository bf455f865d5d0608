"""Reading and writing geodata: rasters and their windows (:mod:`.raster`), the tile grid
(:mod:`.tiling`), streamed Cloud Optimized GeoTIFFs (:mod:`.cog`), pixel normalization
(:mod:`.normalize`) and QGIS styles (:mod:`.style`). The bottom of the package: it imports
nothing else of geounet but :mod:`geounet.errors`.
"""
