"""The provider's algorithms: "Segment raster" (``geogla run`` on a raster layer, its outputs
loaded styled) and "Evaluate" (``geogla eval`` on a labelled benchmark folder)."""

import os
import sqlite3

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsVectorLayer,
)

from .command import eval_arguments, progress_percent, run, segment_arguments

WEIGHTS = ["pretrained", "random"]
PRECISIONS = ["auto", "float32", "bfloat16", "float16"]


class SegmentRaster(QgsProcessingAlgorithm):
    INPUT, CLASSES, MODEL, WEIGHTS = "INPUT", "CLASSES", "MODEL", "WEIGHTS"
    PRECISION, GSD, MIN_AREA, SIMPLIFY = "PRECISION", "GSD", "MIN_AREA", "SIMPLIFY"
    PROBABILITIES, EXTENT, OUTPUT = "PROBABILITIES", "EXTENT", "OUTPUT"

    def __init__(self, command):
        super().__init__()
        self._command = command  # a function: the provider's setting, read when the algorithm runs

    def createInstance(self):
        return SegmentRaster(self._command)

    def name(self):
        return "segmentraster"

    def displayName(self):
        return "Segment raster"

    def shortHelpString(self):
        return ("Segments a raster into the classes you type (commas between classes, | between "
                "synonyms), with frozen CLIP and DINO models and GLA attention across all windows: a "
                "class raster (COG) and one polygon layer per class (GeoPackage) in the output folder, "
                "loaded styled. An area to segment (an extent in any CRS) limits the run to the pixels "
                "under it. Runs the geogla command set in the provider's settings.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterString(self.CLASSES, "Classes",
                                                       defaultValue="building,tree,road"))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Area to segment (default: the whole raster)", optional=True))
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model preset (geogla models)",
                                                       defaultValue="default"))
        self.addParameter(QgsProcessingParameterEnum(self.WEIGHTS, "Weights", options=WEIGHTS,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.PRECISION, "Precision", options=PRECISIONS,
                                                     defaultValue=0))
        for name, label in ((self.GSD, "Working resolution, metres per pixel (0: the raster's)"),
                            (self.MIN_AREA, "Smallest polygon kept, square metres (0: all)"),
                            (self.SIMPLIFY, "Simplify polygons, metres (0: no)")):
            self.addParameter(QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Double,
                                                           defaultValue=0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(self.PROBABILITIES, "Save class probabilities",
                                                        defaultValue=False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer("CLASS_RASTER", "Class raster"))
        self.addOutput(QgsProcessingOutputFile("GEOPACKAGE", "Polygons (GeoPackage)"))
        self.addOutput(QgsProcessingOutputFolder("FOLDER", "Output folder"))

    def checkParameterValues(self, parameters, context):
        classes = self.parameterAsString(parameters, self.CLASSES, context)
        if not classes.strip():
            return False, "Give at least one class, such as building,tree,road."
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("The input raster cannot be opened.")
        scene = layer.source()
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        argv = segment_arguments(
            self._command(), scene, self.parameterAsString(parameters, self.CLASSES, context), out,
            model=self.parameterAsString(parameters, self.MODEL, context),
            weights=WEIGHTS[self.parameterAsEnum(parameters, self.WEIGHTS, context)],
            precision=PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)],
            gsd=self.parameterAsDouble(parameters, self.GSD, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            simplify=self.parameterAsDouble(parameters, self.SIMPLIFY, context),
            save_probabilities=self.parameterAsBool(parameters, self.PROBABILITIES, context),
            bbox=self._bbox(parameters, context, layer),
        )
        if not _run_geogla(argv, feedback):
            return {}
        stem = os.path.splitext(os.path.basename(scene))[0]
        cog = os.path.join(out, f"{stem}.classes.tif")
        gpkg = os.path.join(out, f"{stem}.gpkg")
        # the COG's legend comes from the .qml beside it; each polygon layer from layer_styles
        context.addLayerToLoadOnCompletion(cog, QgsProcessingContext.LayerDetails(
            f"{stem} classes", context.project(), "CLASS_RASTER"))
        for name in _polygon_layers(gpkg):
            vector = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
            context.temporaryLayerStore().addMapLayer(vector)
            context.addLayerToLoadOnCompletion(vector.id(), QgsProcessingContext.LayerDetails(
                name, context.project(), name))
        return {"CLASS_RASTER": cog, "GEOPACKAGE": gpkg, "FOLDER": out}

    def _bbox(self, parameters, context, layer):
        """The area to segment in the raster's CRS (geogla's --bbox), or None for the whole raster."""
        if not parameters.get(self.EXTENT):
            return None
        crs = layer.crs()
        if crs.isValid():
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
        else:  # a raster without a CRS: the extent is in its pixel coordinates already
            rect = self.parameterAsExtent(parameters, self.EXTENT, context)
        if rect.isNull() or rect.isEmpty():
            return None
        return (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())


class Evaluate(QgsProcessingAlgorithm):
    DATASET, ROOT, SPLIT, LEGEND = "DATASET", "ROOT", "SPLIT", "LEGEND"
    ATTENTION, LIMIT, MODEL, WEIGHTS, OUTPUT = "ATTENTION", "LIMIT", "MODEL", "WEIGHTS", "OUTPUT"
    SPLITS = ("the preset's", "train", "val", "test")
    MODES = ("both", "gla", "proxyclip")

    def __init__(self, command):
        super().__init__()
        self._command = command

    def createInstance(self):
        return Evaluate(self._command)

    def name(self):
        return "evaluate"

    def displayName(self):
        return "Evaluate"

    def shortHelpString(self):
        return ("Scores ProxyCLIP and/or GLA on a labelled benchmark folder (a preset such as vaihingen, or "
                "'folder' with a YAML legend): mIoU and Boundary Error Rate, written as metrics.json and "
                "metrics.md in the output folder and shown in the log. Runs geogla eval.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterString(self.DATASET, "Dataset preset (or 'folder')",
                                                       defaultValue="vaihingen"))
        self.addParameter(QgsProcessingParameterFile(self.ROOT, "Dataset folder",
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterEnum(self.SPLIT, "Split", options=list(self.SPLITS),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterFile(self.LEGEND, "Legend (YAML; for 'folder')",
                                                     optional=True, extension="yaml"))
        self.addParameter(QgsProcessingParameterEnum(self.ATTENTION, "Attention", options=list(self.MODES),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.LIMIT, "Images to score (0: all)",
                                                       QgsProcessingParameterNumber.Integer, defaultValue=0,
                                                       minValue=0))
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model preset (geogla models)",
                                                       defaultValue="default"))
        self.addParameter(QgsProcessingParameterEnum(self.WEIGHTS, "Weights", options=WEIGHTS,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputFile("METRICS", "Metrics (JSON)"))
        self.addOutput(QgsProcessingOutputFolder("FOLDER", "Output folder"))

    def processAlgorithm(self, parameters, context, feedback):
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        split = self.parameterAsEnum(parameters, self.SPLIT, context)
        argv = eval_arguments(
            self._command(), self.parameterAsString(parameters, self.DATASET, context),
            self.parameterAsString(parameters, self.ROOT, context), out,
            split=self.SPLITS[split] if split else None,
            legend=self.parameterAsString(parameters, self.LEGEND, context) or None,
            attention=self.MODES[self.parameterAsEnum(parameters, self.ATTENTION, context)],
            limit=self.parameterAsInt(parameters, self.LIMIT, context),
            model=self.parameterAsString(parameters, self.MODEL, context),
            weights=WEIGHTS[self.parameterAsEnum(parameters, self.WEIGHTS, context)],
        )
        if not _run_geogla(argv, feedback):
            return {}
        return {"METRICS": os.path.join(out, "metrics.json"), "FOLDER": out}


def _run_geogla(argv, feedback):
    """Run a geogla command for an algorithm: its lines into the log, its progress into the bar;
    False when cancelled; its one-sentence message as the algorithm's error when it fails."""
    feedback.pushCommandInfo(" ".join(argv))

    def on_line(line):
        feedback.pushConsoleInfo(line)
        percent = progress_percent(line)
        if percent is not None:
            feedback.setProgress(percent)

    try:
        outcome = run(argv, on_line, feedback.isCanceled)
    except OSError as exc:
        raise QgsProcessingException(f"The geogla command {argv[0]!r} cannot be run ({exc.strerror}): "
                                     "set it in the geogla provider's settings.") from None
    if outcome.cancelled:
        feedback.reportError("Cancelled: geogla was stopped; its run store keeps what was done.")
        return False
    if outcome.returncode != 0:
        raise QgsProcessingException(outcome.message or f"geogla ended with exit code {outcome.returncode}.")
    return True


def _polygon_layers(gpkg):
    """The GeoPackage's feature tables, in the order geogla wrote them."""
    if not os.path.exists(gpkg):
        return []
    with sqlite3.connect(gpkg) as conn:
        rows = conn.execute(
            "SELECT table_name FROM gpkg_contents WHERE data_type = 'features' ORDER BY rowid"
        )
        return [row[0] for row in rows]
