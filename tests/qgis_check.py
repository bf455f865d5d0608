"""Open geounet outputs in a real, headless QGIS and report what it sees (run by the system Python).

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py SPEC.json RESULT.json

SPEC: {"scene": path, "rasters": [paths], "vectors": [paths or path|layername=NAME], "png": optional
path, "size": [w, h]}.
RESULT: per layer {valid, crs, features, extent, renderer, geometry (0 point, 1 line, 2 polygon), wkb,
categories/classes, line_widths ([width, unit] of line symbols)}, the scene's CRS and
extent, and the PNG path if one was rendered (scene + mask + polygons, as an analyst would see it).
It installs nothing and asserts nothing: the pytest side does.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsUnitTypes,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def extent(layer: object) -> list[float]:
    e = layer.extent()  # type: ignore[attr-defined]
    return [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]


def describe_raster(path: str) -> dict[str, object]:
    layer = QgsRasterLayer(path, os.path.basename(path))
    out: dict[str, object] = {"path": path, "valid": layer.isValid()}
    if layer.isValid():
        r = layer.renderer()
        out.update(
            crs=layer.crs().authid(),
            extent=extent(layer),
            renderer=r.type(),
            bands=layer.bandCount(),
        )
        if r.type() == "paletted":
            out["classes"] = [[int(c.value), c.label, c.color.name()] for c in r.classes()]
        if r.type() == "singlebandpseudocolor":
            fn = r.shader().rasterShaderFunction()
            out["ramp"] = [fn.minimumValue(), fn.maximumValue(), len(fn.colorRampItemList())]
    return out, layer  # type: ignore[return-value]


def describe_vector(path: str) -> tuple[dict[str, object], object]:
    """A vector file (``path|layername=NAME`` for one GeoPackage layer) as QGIS opens it."""
    layer = QgsVectorLayer(path, os.path.basename(path), "ogr")
    out: dict[str, object] = {"path": path, "valid": layer.isValid()}
    if layer.isValid():
        r = layer.renderer()
        out.update(
            crs=layer.crs().authid(),
            extent=extent(layer),
            features=layer.featureCount(),
            renderer=r.type(),
            geometry=int(layer.geometryType()),
            wkb=QgsWkbTypes.displayString(layer.wkbType()),
            fields=[f.name() for f in layer.fields()],
        )
        if r.type() == "categorizedSymbol":
            out["attr"] = r.classAttribute()
            out["categories"] = [[c.value(), c.symbol().color().name()] for c in r.categories()]
            # Line symbols: [width, unit] of each category's (first) symbol layer.
            out["line_widths"] = [
                [
                    c.symbol().symbolLayer(0).width(),
                    QgsUnitTypes.encodeUnit(c.symbol().symbolLayer(0).widthUnit()),
                ]
                for c in r.categories()
                if c.symbol().type() == 1  # QgsSymbol.Line
            ]
    return out, layer


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    app = QgsApplication([], False)
    app.initQgis()
    result: dict[str, object] = {}
    scene, scene_layer = describe_raster(spec["scene"])
    result["scene"] = scene
    keep = [scene_layer]
    result["rasters"] = []
    result["vectors"] = []
    for path in spec.get("rasters", []):
        info, layer = describe_raster(path)
        result["rasters"].append(info)  # type: ignore[union-attr]
        keep.append(layer)
    vectors = []
    for path in spec.get("vectors", []):
        info, layer = describe_vector(path)
        result["vectors"].append(info)  # type: ignore[union-attr]
        if info["valid"]:
            vectors.append(layer)
    if spec.get("png") and scene_layer.isValid():
        settings = QgsMapSettings()
        overlay = [l for l in keep[1:] if l.isValid() and l.renderer().type() == "paletted"][:1]
        if overlay:
            overlay[0].renderer().setOpacity(0.45)
        settings.setLayers(vectors[:1] + overlay + [scene_layer])
        settings.setDestinationCrs(scene_layer.crs())
        settings.setExtent(scene_layer.extent())
        settings.setOutputSize(QSize(*spec.get("size", [900, 900])))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        image = job.renderedImage()
        result["png"] = spec["png"] if image.save(spec["png"], "PNG") else None
    with open(sys.argv[2], "w") as f:
        json.dump(result, f, indent=1)
    # Layers must go before QGIS does; PyQGIS otherwise crashes at interpreter exit.
    del keep, vectors, scene_layer
    app.exitQgis()
    os._exit(0)


if __name__ == "__main__":
    main()
