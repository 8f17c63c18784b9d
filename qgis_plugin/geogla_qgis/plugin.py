"""The plugin: registers the Processing provider (QGIS's convention for a plugin wrapping a tool)."""

from qgis.core import QgsApplication

from .provider import GeoglaProvider


class GeoglaPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        self.provider = GeoglaProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
