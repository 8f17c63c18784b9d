"""Open a run's outputs in QGIS, headless, the way a user adds them, and print what QGIS shows.

Run by tests/test_qgis.py with the Python that has QGIS's bindings (Debian: ``/usr/bin/python3``
with ``python3-qgis``), never imported by the test suite: ``python3 qgis_probe.py OUT STEM``.
Prints one JSON object: the class raster's renderer and legend labels, each GeoPackage layer's
name, validity and feature count, and the probability raster's band names and scales.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer


def main(out: str, stem: str) -> dict[str, object]:
    report: dict[str, object] = {}
    classes = QgsRasterLayer(os.path.join(out, f"{stem}.classes.tif"), "classes")
    renderer = classes.renderer()
    report["classes"] = {
        "valid": classes.isValid(),
        "renderer": renderer.type(),
        "legend": [label for label, _ in renderer.legendSymbologyItems()],
    }
    gpkg = os.path.join(out, f"{stem}.gpkg")
    layers = []
    probe = QgsVectorLayer(gpkg, "probe", "ogr")
    for sub in probe.dataProvider().subLayers():
        name = sub.split("!!::!!")[1]
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        layers.append({"name": name, "valid": layer.isValid(), "features": layer.featureCount()})
    report["gpkg"] = layers
    probabilities = os.path.join(out, f"{stem}.probabilities.tif")
    if os.path.exists(probabilities):
        layer = QgsRasterLayer(probabilities, "probabilities")
        provider = layer.dataProvider()
        bands = range(1, layer.bandCount() + 1)
        report["probabilities"] = {
            "valid": layer.isValid(),
            "band_names": [layer.bandName(b) for b in bands],
            "scales": [provider.bandScale(b) for b in bands],
        }
    return report


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    try:
        print(json.dumps(main(sys.argv[1], sys.argv[2])))
    finally:
        app.exitQgis()
