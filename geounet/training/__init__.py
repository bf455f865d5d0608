"""Training and evaluation: windows and labels as samples (:mod:`.dataset`), the training run
(:mod:`.train`) and the pixel and object metrics (:mod:`.evaluate`).
"""
