"""The geogla Processing provider: its setting (which ``geogla`` command to run) and algorithms."""

from processing.core.ProcessingConfig import ProcessingConfig, Setting
from qgis.core import QgsProcessingProvider

from .algorithms import Evaluate, SegmentRaster

#: The setting naming the geogla command (Settings > Options > Processing > Providers > geogla),
#: like QGIS's own GDAL provider runs GDAL's programs: a path such as
#: ``/home/me/geogla-env/bin/geogla``, or ``geogla`` when it is on the PATH.
COMMAND_SETTING = "GEOGLA_COMMAND"


def geogla_command():
    """The geogla command the provider's setting names (``geogla`` when unset)."""
    return ProcessingConfig.getSetting(COMMAND_SETTING) or "geogla"


class GeoglaProvider(QgsProcessingProvider):
    def load(self):
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(self.name(), COMMAND_SETTING, "geogla command (path to the "
                                            "geogla program of its Python environment)", "geogla",
                                            valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        ProcessingConfig.removeSetting(COMMAND_SETTING)

    def loadAlgorithms(self):
        self.addAlgorithm(SegmentRaster(geogla_command))
        self.addAlgorithm(Evaluate(geogla_command))

    def id(self):
        return "geogla"

    def name(self):
        return "geogla"

    def longName(self):
        return "geogla: open-vocabulary segmentation (GLA-CLIP)"
