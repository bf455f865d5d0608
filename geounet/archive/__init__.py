"""Many scenes: resumable batches on one machine or a Dask cluster (:mod:`.batch`), STAC
catalogs in and out (:mod:`.stac`) and the model's own STAC item (:mod:`.stac_model`).
"""
