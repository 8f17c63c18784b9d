"""geogla for QGIS: a Processing provider whose algorithms run the ``geogla`` command."""


def classFactory(iface):
    from .plugin import GeoglaPlugin

    return GeoglaPlugin(iface)
