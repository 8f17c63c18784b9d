"""Run the geogla Processing provider's "Segment raster" in QGIS, headless, and print what happened.

Run by tests/test_qgis.py with the Python that has QGIS's bindings, never imported by the suite:
``python3 qgis_processing_probe.py MODE COMMAND SCENE OUT [CLASSES]``, MODE one of ``run``
(run and load the results into the project), ``cancel`` (cancel at the first line geogla prints),
``error`` (whatever ``CLASSES`` gives), ``evaluate`` ("Evaluate" on the vaihingen folder SCENE,
one image, tiny model, random weights).  Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path[:0] = ["/usr/share/qgis/python/plugins", str(Path(__file__).resolve().parents[1] / "qgis_plugin")]

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
)


class Feedback(QgsProcessingFeedback):  # type: ignore[misc]
    """Records progress and lines; cancels at the first line when asked to."""

    def __init__(self, cancel_at_first_line: bool) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.percents: list[float] = []
        self.cancel_at_first_line = cancel_at_first_line
        self.progressChanged.connect(self.percents.append)

    def pushConsoleInfo(self, info: str) -> None:
        self.lines.append(info)
        if self.cancel_at_first_line:
            self.cancel()


def main(mode: str, command: str, scene: str, out: str, classes: str, extent: str = "") -> dict[str, object]:
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig

    Processing.initialize()
    import processing
    from geogla_qgis.provider import COMMAND_SETTING, GeoglaProvider

    provider = GeoglaProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    ProcessingConfig.setSettingValue(COMMAND_SETTING, command)
    params: dict[str, object] = {"INPUT": scene, "CLASSES": classes, "MODEL": "tiny", "WEIGHTS": 1,
                                 "OUTPUT": out}
    if extent:
        params["EXTENT"] = extent
    algorithm = "geogla:segmentraster"
    if mode == "evaluate":
        algorithm = "geogla:evaluate"
        params = {"DATASET": "vaihingen", "ROOT": scene, "ATTENTION": 1, "LIMIT": 1, "MODEL": "tiny",
                  "WEIGHTS": 1, "OUTPUT": out}
    feedback = Feedback(cancel_at_first_line=mode == "cancel")
    report: dict[str, object] = {"algorithms": sorted(a.id() for a in provider.algorithms())}
    try:
        if mode == "run":
            result = processing.runAndLoadResults(algorithm, params, feedback=feedback)
        else:
            result = processing.run(algorithm, params, feedback=feedback)
        report["result"] = {k: str(v) for k, v in result.items()}
    except QgsProcessingException as exc:
        report["error"] = str(exc)
    report["percents"] = feedback.percents
    report["canceled"] = feedback.isCanceled()
    report["lines"] = feedback.lines
    layers = QgsProject.instance().mapLayers().values()
    report["layers"] = sorted(layer.name() for layer in layers)
    report["renderers"] = sorted(layer.renderer().type() for layer in layers if layer.type() == 1)
    return report


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    try:
        mode, command, scene, out = sys.argv[1:5]
        classes = sys.argv[5] if len(sys.argv) > 5 else "building,tree,road"
        extent = sys.argv[6] if len(sys.argv) > 6 else ""
        print(json.dumps(main(mode, command, scene, out, classes, extent)))
    finally:
        app.exitQgis()
