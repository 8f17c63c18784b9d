"""Package the QGIS plugin as the zip QGIS installs (Plugins > Manage and Install > Install from ZIP).

    uv run python qgis_plugin/make_zip.py           # -> dist/geogla_qgis-<version>.zip
"""

from __future__ import annotations

import argparse
import configparser
import zipfile
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "geogla_qgis"


def plugin_version() -> str:
    """The version in the plugin's metadata.txt."""
    meta = configparser.ConfigParser()
    meta.read(PLUGIN / "metadata.txt", encoding="utf-8")
    return meta["general"]["version"]


def package(dist: Path) -> Path:
    """Write ``dist/geogla_qgis-<version>.zip``: the plugin folder at the zip's root, sources and
    metadata only."""
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"geogla_qgis-{plugin_version()}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(PLUGIN.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".txt", ".png"):
                zf.write(path, Path(PLUGIN.name) / path.relative_to(PLUGIN))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=Path("dist"), help="folder of the zip (default: dist)")
    print(package(parser.parse_args().dist))


if __name__ == "__main__":
    main()
