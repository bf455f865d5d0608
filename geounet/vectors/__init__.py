"""From masks to vectors: polygons and road centerlines.

:mod:`~geounet.vectors.strips` vectorizes a class mask strip by strip
(:class:`~geounet.vectors.strips.StripVectorizer`), joining pieces across strip seams with
:mod:`~geounet.vectors.seams`; :mod:`~geounet.vectors.features` turns the pixel polygons into a
feature table in map coordinates, reshaping them with :mod:`~geounet.vectors.polygons` (validity,
squared outlines) and :mod:`~geounet.vectors.separate` (touching buildings split apart);
:mod:`~geounet.vectors.writer` writes vector files; :mod:`~geounet.vectors.centerline` traces road
centerlines.
"""
