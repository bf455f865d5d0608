"""From masks to vectors: the strip vectorizer and its seam join, polygon post-processing
(squared outlines, touching buildings split apart), the vector writer, and road centerlines.
"""
