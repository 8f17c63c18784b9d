"""Take the README's screenshot of the "Segment raster" dialog, headless (Debian's QGIS):

    python3 qgis_plugin/screenshot.py SCENE.tif docs/img/qgis-segment-raster.png

Run with the Python that has QGIS's bindings (``/usr/bin/python3`` with ``python3-qgis``).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path[:0] = ["/usr/share/qgis/python/plugins", str(Path(__file__).resolve().parent)]

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer  # noqa: E402


def main(scene, target):
    from processing.core.Processing import Processing

    Processing.initialize()
    from geogla_qgis.provider import GeoglaProvider
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    provider = GeoglaProvider()  # kept alive while the dialog lives
    QgsApplication.processingRegistry().addProvider(provider)
    layer = QgsRasterLayer(scene, "ortho")
    QgsProject.instance().addMapLayer(layer)
    dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("geogla:segmentraster"))
    dialog.resize(900, 640)
    dialog.show()
    QgsApplication.processEvents()
    saved = dialog.grab().save(target)
    dialog.close()
    QgsApplication.processingRegistry().removeProvider(provider)
    return saved


if __name__ == "__main__":
    app = QgsApplication([], True)
    app.initQgis()
    try:
        sys.exit(0 if main(sys.argv[1], sys.argv[2]) else 1)
    finally:
        app.exitQgis()
