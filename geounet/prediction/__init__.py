"""Tiled prediction: windows read ahead, batched through the network, blended back into strips
(:mod:`.blend`) and streamed to rasters and vectors (:mod:`.predictor`, :mod:`.sinks`).
"""
