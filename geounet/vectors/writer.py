"""Writing vector files: the format by suffix, one-shot writes and the streaming writer.

:func:`write_vectors` writes a whole GeoDataFrame; :class:`VectorWriter` takes polygons (or
centerlines) in batches while a prediction runs and finishes the file at the end (GeoJSON and
FlatGeobuf through a GeoPackage scratch file, GeoParquet a row group per batch). Styles go
with the file (a GeoPackage ``layer_styles`` row or a ``.qml`` beside it), and a failed write
is an :class:`~geounet.errors.OutputError`. geopandas, pyogrio and pyarrow are imported on first
use (:func:`import_vector_libraries`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from geounet.errors import OutputError
from geounet.geodata.style import write_gpkg_style, write_sidecar_qml

if TYPE_CHECKING:
    import geopandas as gpd

logger = logging.getLogger(__name__)


#: Output formats by suffix: (GDAL driver, whether the format holds mixed Polygon/MultiPolygon).
VECTOR_FORMATS: dict[str, str] = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GPKG",
    ".fgb": "FlatGeobuf",
    ".shp": "ESRI Shapefile",
    ".parquet": "Parquet",
}


def vector_driver(path: str | os.PathLike[str]) -> str:
    """The GDAL driver (or ``Parquet``) for an output path, from its suffix.

    Raises:
        OutputError: For an unknown suffix, listing the known ones.
    """
    suffix = Path(path).suffix.lower()
    try:
        return VECTOR_FORMATS[suffix]
    except KeyError:
        known = ", ".join(VECTOR_FORMATS)
        raise OutputError(
            f"{Path(path).name}: unknown vector format {suffix or '(no suffix)'!r}; use one of {known}"
        ) from None


def import_vector_libraries() -> float:
    """Import geopandas and pyogrio (with pandas), which only the vector output needs.

    They are imported when the first vector file is made rather than with this module, so a
    prediction holds ~64 MB less until its end. Returns the seconds it took (0 once loaded).
    """
    import time

    t0 = time.perf_counter()
    import geopandas  # noqa: F401
    import pyogrio  # noqa: F401

    return time.perf_counter() - t0


def write_vectors(
    frame: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    layer: str | None = None,
    style: str | None = None,
    lines: bool = False,
) -> None:
    """Write polygons (``lines``: LineStrings) with the driver chosen by suffix, in the frame's CRS.

    GeoJSON keeps the scene's CRS (GDAL writes its ``crs`` member) unless the caller reprojected.
    ``style`` (QGIS QML) becomes the layer's default style: a ``layer_styles`` row in a
    GeoPackage, a ``.qml`` file beside any other format.

    Raises:
        OutputError: Unknown suffix or a failed write (disk full, permissions).
    """
    driver = vector_driver(path)
    path = Path(path)
    try:
        if driver == "Parquet":
            frame.to_parquet(path, index=False)
        else:
            _write_ogr(frame, path, driver, layer, lines=lines)
        if style is not None:
            if driver == "GPKG":
                write_gpkg_style(path, layer or path.stem, style)
            else:
                write_sidecar_qml(path, style)
    except OutputError:
        raise
    except Exception as exc:  # pyogrio/pyarrow/sqlite raise their own types for I/O failures
        raise _write_error(path, exc) from exc


def _write_ogr(
    frame: gpd.GeoDataFrame,
    path: Path,
    driver: str,
    layer: str | None,
    *,
    append: bool = False,
    promote: bool | None = None,
    scratch: bool = False,
    lines: bool = False,
) -> None:
    import pyogrio

    kwargs: dict[str, Any] = {}
    if scratch:  # read once, in order: no spatial index to build
        kwargs["layer_options"] = {"SPATIAL_INDEX": "NO"}
    if promote is None:
        promote = driver != "GeoJSON"
    if lines:  # centerlines are single LineStrings, as network tools want them
        kwargs["geometry_type"] = "LineString"
    elif promote:
        kwargs["promote_to_multi"] = True
    elif driver != "GeoJSON":
        kwargs["geometry_type"] = "Unknown"  # Polygon and MultiPolygon in one layer
    if len(frame) == 0 and not lines:
        kwargs["geometry_type"] = "MultiPolygon" if promote else "Polygon"
    if driver == "GPKG":
        kwargs["layer"] = layer or path.stem
        if not append:
            # GeoPackage 1.2: what older GDAL/QGIS/ArcGIS builds read without a version warning.
            kwargs["dataset_options"] = {"VERSION": "1.2"}
    pyogrio.write_dataframe(frame, path, driver=driver, append=append, **kwargs)


#: Polygons held before they are written while strips are still coming (a batch of the file).
WRITE_BATCH = 10_000


#: Features up to which a streamed FlatGeobuf gets its spatial index. GDAL's writer holds every
#: feature's extent until the end to build it (about 100 bytes a feature: 330 MB for 3.4 million
#: speckle polygons), memory by the feature count; above this, the file is written without one
#: (QGIS reads it all the same, by scanning) and a warning says so.
FGB_INDEX_MAX_FEATURES = 1_000_000


class VectorWriter:
    """Polygons written to a vector file in batches, as they are finished, and complete only
    after :meth:`close`.

    GeoPackage and Shapefile take each batch by appending to the file. GeoJSON and
    FlatGeobuf, whose GDAL drivers cannot append, are written at :meth:`close` from a
    GeoPackage scratch file beside the output that took the batches, through GDAL's Arrow
    streams (a batch at a time: the features never come back into Python). GeoParquet is
    written a row group per batch with pyarrow, its ``geo`` metadata (GeoParquet 1.0.0:
    WKB, CRS as PROJJSON, geometry types, bounding box) added at the end. Without any
    polygon the file is still made, empty, with its columns and CRS.

    Args:
        path: Output path (its suffix picks the format; under :class:`~geounet.geodata.raster.AtomicOutputs`
            a temporary path, so a failed run leaves nothing).
        style: QGIS QML: the layer's default style (a ``layer_styles`` row in a GeoPackage, a
            ``.qml`` file beside any other format).
        layer: GeoPackage layer name (default: the file's stem).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        style: str | None = None,
        layer: str | None = None,
        lines: bool = False,
    ) -> None:
        self.lines = lines  # LineStrings (centerlines) rather than polygons
        self.path = Path(path)
        self.driver = vector_driver(path)
        self.style = style
        self.layer = layer
        self.features = 0
        self._empty: gpd.GeoDataFrame | None = None  # the schema, while nothing is written
        self._scratch = (
            self.path.with_name(self.path.name + ".batches.gpkg")
            if self.driver in ("GeoJSON", "FlatGeobuf")
            else None
        )
        self._parquet: Any = None
        self._crs: Any = None  # of the GeoParquet batches
        self._types: set[int] = set()  # shapely geometry type ids
        self._bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])

    def write(self, frame: gpd.GeoDataFrame) -> None:
        """Append a batch of polygons (columns and CRS as in the first batch)."""
        if self._empty is None:
            self._empty = frame.iloc[:0]
        if not len(frame):
            return
        try:
            if self.driver == "Parquet":
                self._write_parquet(frame)
            elif self._scratch is not None:
                _write_ogr(
                    frame,
                    self._scratch,
                    "GPKG",
                    "batches",
                    append=self.features > 0,
                    promote=self.driver != "GeoJSON",
                    scratch=True,
                    lines=self.lines,
                )
            else:
                _write_ogr(
                    frame,
                    self.path,
                    self.driver,
                    self.layer,
                    append=self.features > 0,
                    lines=self.lines,
                )
        except Exception as exc:
            raise _write_error(self.path, exc) from exc
        self.features += len(frame)

    def close(self) -> int:
        """Finish the file (and its style); returns the number of features."""
        try:
            if self.features == 0:
                self._parquet = None
                if self._empty is not None:
                    write_vectors(
                        self._empty, self.path, layer=self.layer, style=self.style, lines=self.lines
                    )
                    return 0
                raise ValueError("no batch was written, not even an empty one")
            if self.driver == "Parquet":
                self._close_parquet()
            elif self._scratch is not None:
                self._convert_scratch()
            if self.style is not None:
                if self.driver == "GPKG":
                    write_gpkg_style(self.path, self.layer or self.path.stem, self.style)
                else:
                    write_sidecar_qml(self.path, self.style)
        except OutputError:
            raise
        except Exception as exc:
            raise _write_error(self.path, exc) from exc
        finally:
            self.abort()
        return self.features

    def abort(self) -> None:
        """Drop the scratch file and any open writer (the output itself is the caller's)."""
        if self._parquet is not None:
            with contextlib.suppress(Exception):  # the run failed already; the file goes anyway
                self._parquet.close()
            self._parquet = None
        if self._scratch is not None:
            for part in self._scratch.parent.glob(self._scratch.name + "*"):
                part.unlink(missing_ok=True)

    def _convert_scratch(self) -> None:
        import pyogrio

        assert self._scratch is not None
        import pyarrow as pa

        stopped: list[BaseException] = []
        with pyogrio.raw.open_arrow(self._scratch, use_pyarrow=True, batch_size=WRITE_BATCH) as (
            meta,
            reader,
        ):

            def batches() -> Iterator[Any]:
                # GDAL pulls each batch through Python: a Ctrl-C or SIGTERM that arrives while it
                # writes is acted on at the next batch, not after the whole file.
                try:
                    yield from reader
                except BaseException as exc:
                    stopped.append(exc)
                    raise

            try:
                self._write_arrow(pa.RecordBatchReader.from_batches(reader.schema, batches()), meta)
            except Exception:
                if stopped:
                    raise stopped[0] from None
                raise

    def _write_arrow(self, stream: Any, meta: dict[str, Any]) -> None:
        import pyogrio

        options = {}
        if self.driver == "FlatGeobuf" and self.features > FGB_INDEX_MAX_FEATURES:
            options["SPATIAL_INDEX"] = "NO"
            logger.warning(
                "%s: %d features, written without a FlatGeobuf spatial index (GDAL builds it in "
                "memory, about 100 bytes a feature); write .gpkg for an indexed file this large",
                self.path.name,
                self.features,
            )
        pyogrio.raw.write_arrow(
            stream,
            self.path,
            driver=self.driver,
            geometry_name=meta["geometry_name"] or "wkb_geometry",
            geometry_type="LineString"
            if self.lines
            else "MultiPolygon"
            if self.driver != "GeoJSON"
            else "Unknown",
            crs=meta["crs"],
            encoding="UTF-8" if self.driver != "GeoJSON" else None,
            layer_options=options or None,
        )

    def _write_parquet(self, frame: gpd.GeoDataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        geoms = frame.geometry.values
        table = pa.Table.from_pandas(pd_frame(frame), preserve_index=False)
        table = table.append_column(
            "geometry", pa.array(shapely.to_wkb(np.asarray(geoms)), pa.binary())
        )
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._crs = frame.crs
        self._parquet.write_table(table)
        self._types.update(shapely.get_type_id(np.asarray(geoms)).tolist())
        b = frame.total_bounds
        self._bounds = np.concatenate(
            [np.minimum(self._bounds[:2], b[:2]), np.maximum(self._bounds[2:], b[2:])]
        )

    def _close_parquet(self) -> None:
        import json

        from geounet import __version__

        names = {1: "LineString", 3: "Polygon", 6: "MultiPolygon"}
        column: dict[str, Any] = {
            "encoding": "WKB",
            "geometry_types": sorted(names.get(t, "Unknown") for t in self._types),
            "bbox": [float(v) for v in self._bounds],
        }
        if self._crs is not None:
            column["crs"] = self._crs.to_json_dict()
        geo = {
            "version": "1.0.0",
            "primary_column": "geometry",
            "columns": {"geometry": column},
            "creator": {"library": "geounet", "version": __version__},
        }
        self._parquet.add_key_value_metadata({"geo": json.dumps(geo)})
        self._parquet.close()
        self._parquet = None


def pd_frame(frame: gpd.GeoDataFrame) -> Any:
    """The attribute columns of a GeoDataFrame, as a plain pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(frame.drop(columns=frame.geometry.name))


def _write_error(path: Path, exc: Exception) -> OutputError:
    return OutputError(
        f"writing {path.name} failed ({str(exc).splitlines()[0]}); the disk may be full: free space or write elsewhere"
    )
