"""Default QGIS styles for geounet's outputs, so results look right the moment they are opened.

QGIS reads a vector layer's default style from a GeoPackage's ``layer_styles`` table, and a
file layer's default style from a ``.qml`` file of the same base name beside it. This module
builds those QML documents (categorized polygons by class, a paletted class mask, a colour ramp
for probabilities) as plain XML, writes the GeoPackage table with sqlite3, and writes GDAL PAM
category names for the class mask. No QGIS needed to write them; the QGIS test checks they load.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

_HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"

#: The perceptual ramp used for probabilities (viridis stops), transparent at 0.
_RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    if len(h) != 6:
        return (255, 0, 0)
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


def vector_qml(class_names: Sequence[str], colours: Sequence[str], *, attr: str = "class") -> str:
    """A categorized fill style: one semi-transparent fill with a solid outline per class."""
    cats = []
    syms = []
    for i, name in enumerate(class_names):
        r, g, b = _rgb(colours[i] if i < len(colours) else "#ff0000")
        props = {
            "color": f"{r},{g},{b},90",
            "outline_color": f"{r},{g},{b},255",
            "outline_style": "solid",
            "outline_width": "0.4",
            "outline_width_unit": "MM",
            "style": "solid",
            "joinstyle": "miter",
        }
        opts = "".join(f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items())
        legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
        cats.append(
            f'<category label={quoteattr(name)} render="true" value={quoteattr(name)} symbol="{i}"/>'
        )
        syms.append(
            f'<symbol type="fill" alpha="1" name="{i}" force_rhr="0" clip_to_extent="1">'
            f'<layer enabled="1" class="SimpleFill" locked="0" pass="0">'
            f'<Option type="Map">{opts}</Option>{legacy}</layer></symbol>'
        )
    return _categorized(cats, syms, attr, geometry_type=2)


def line_qml(
    class_names: Sequence[str],
    colours: Sequence[str],
    width_m: float | None,
    *,
    attr: str = "class",
) -> str:
    """A categorized line style for centerlines: one solid line per class in its colour, drawn
    ``width_m`` metres wide on the ground (``RenderMetersInMapUnits``, whatever the CRS), or
    0.8 mm on screen when the width is unknown."""
    cats = []
    syms = []
    width, unit = (f"{width_m:g}", "RenderMetersInMapUnits") if width_m else ("0.8", "MM")
    for i, name in enumerate(class_names):
        r, g, b = _rgb(colours[i] if i < len(colours) else "#ff0000")
        props = {
            "line_color": f"{r},{g},{b},255",
            "line_style": "solid",
            "line_width": width,
            "line_width_unit": unit,
            "capstyle": "round",
            "joinstyle": "round",
        }
        opts = "".join(f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items())
        legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
        cats.append(
            f'<category label={quoteattr(name)} render="true" value={quoteattr(name)} symbol="{i}"/>'
        )
        syms.append(
            f'<symbol type="line" alpha="1" name="{i}" force_rhr="0" clip_to_extent="1">'
            f'<layer enabled="1" class="SimpleLine" locked="0" pass="0">'
            f'<Option type="Map">{opts}</Option>{legacy}</layer></symbol>'
        )
    return _categorized(cats, syms, attr, geometry_type=1)


def _pipe(renderer: str) -> str:
    return (
        _HEADER
        + '<qgis version="3.22" styleCategories="Symbology"><pipe>'
        + renderer
        + '<brightnesscontrast brightness="0" contrast="0" gamma="1"/>'
        + "</pipe><blendMode>0</blendMode></qgis>\n"
    )


def probability_qml(max_value: float, *, band: int = 1) -> str:
    """A single-band pseudocolour ramp over ``0..max_value`` (1 for float32, 254 for uint8)."""
    items = []
    for k, colour in enumerate(_RAMP):
        value = max_value * k / (len(_RAMP) - 1)
        alpha = 0 if k == 0 else 255
        items.append(
            f'<item label="{k / (len(_RAMP) - 1):g}" alpha="{alpha}" value="{value:g}" color="{colour}"/>'
        )
    return _pipe(
        f'<rasterrenderer opacity="1" type="singlebandpseudocolor" band="{band}" '
        f'classificationMin="0" classificationMax="{max_value:g}" alphaBand="-1" nodataColor="">'
        "<minMaxOrigin><limits>None</limits><extent>WholeRaster</extent></minMaxOrigin>"
        f'<rastershader><colorrampshader colorRampType="INTERPOLATED" clip="0" minimumValue="0" '
        f'maximumValue="{max_value:g}" classificationMode="1">'
        + "".join(items)
        + "</colorrampshader></rastershader></rasterrenderer>"
    )


def mask_qml(entries: Sequence[tuple[int, str, str]]) -> str:
    """A paletted style for a class mask: ``(value, name, #colour)`` per class shown."""
    palette = "".join(
        f'<paletteEntry label={quoteattr(name)} alpha="255" value="{value}" color="{colour}"/>'
        for value, name, colour in entries
    )
    return _pipe(
        '<rasterrenderer opacity="1" type="paletted" band="1" alphaBand="-1" nodataColor="">'
        f"<colorPalette>{palette}</colorPalette></rasterrenderer>"
    )


def write_sidecar_qml(path: str | os.PathLike[str], qml: str) -> Path:
    """Write ``<path without suffix>.qml``, which QGIS loads as the layer's default style."""
    side = Path(path).with_suffix(".qml")
    side.write_text(qml, encoding="utf-8")
    return side


def write_gpkg_style(
    path: str | os.PathLike[str], layer: str, qml: str, *, name: str = "geounet"
) -> None:
    """Store ``qml`` as the default style of ``layer`` in a GeoPackage's ``layer_styles`` table."""
    con = sqlite3.connect(str(path))
    try:
        row = con.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        geom_col = row[0] if row else "geom"
        con.execute(
            """CREATE TABLE IF NOT EXISTS layer_styles (
                id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256),
                f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256),
                styleName TEXT(30), styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN,
                description TEXT, owner TEXT(30), ui TEXT(30),
                update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""
        )
        con.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner) "
            "VALUES ('', '', ?, ?, ?, ?, '', 1, 'classes and colours from the model file', '')",
            (layer, geom_col, name, qml),
        )
        con.commit()
    finally:
        con.close()


def write_category_names(path: str | os.PathLike[str], names: Sequence[str]) -> Path:
    """GDAL PAM sidecar (``.aux.xml``) giving band 1's category names (value = index)."""
    aux = Path(str(path) + ".aux.xml")
    cats = "".join(f"<Category>{_escape(n)}</Category>" for n in names)
    aux.write_text(
        f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{cats}</CategoryNames>'
        "</PAMRasterBand></PAMDataset>\n",
        encoding="utf-8",
    )
    return aux


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _categorized(cats: list[str], syms: list[str], attr: str, *, geometry_type: int) -> str:
    """A QML document with a categorized renderer on ``attr`` (QGIS geometry type: 1 line,
    2 polygon)."""
    return (
        _HEADER
        + '<qgis version="3.22" styleCategories="Symbology">'
        + f'<renderer-v2 forceraster="0" type="categorizedSymbol" attr={quoteattr(attr)} symbollevels="0" enableorderby="0">'
        + "<categories>"
        + "".join(cats)
        + "</categories>"
        + "<symbols>"
        + "".join(syms)
        + "</symbols>"
        + "</renderer-v2><blendMode>0</blendMode><featureBlendMode>0</featureBlendMode>"
        + f"<layerGeometryType>{geometry_type}</layerGeometryType></qgis>\n"
    )
