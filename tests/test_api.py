"""The Python API (``geogla.segment``, ``geogla.evaluate``), the command line as a thin layer over it,
and the package's structure: cheap imports, cheap checks first, no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

import geogla
from geogla.cli import main
from geogla.errors import ConfigError
from tests.conftest import REPO

pytestmark = [pytest.mark.filterwarnings("ignore::geogla.models.weights.RandomWeightsWarning")]

TINY = ["--model", "tiny", "--weights", "random"]


def test_segment_writes_what_the_command_writes(scene_tif: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "run",
                str(scene_tif),
                "--classes",
                "building,tree|forest",
                "-o",
                str(tmp_path / "cli"),
                "-q",
                *TINY,
            ]
        )
        == 0
    )
    result = geogla.segment(
        scene_tif, "building,tree|forest", tmp_path / "api", model="tiny", weights="random"
    )
    assert set(result.outputs) == {"cog", "legend", "gpkg", "stac"} and result.valid_windows == 6
    for name in ("scene.classes.tif", "scene.gpkg"):
        assert (tmp_path / "api" / name).is_file()
    with (
        rasterio.open(tmp_path / "cli" / "scene.classes.tif") as a,
        rasterio.open(result.outputs["cog"]) as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.profile == b.profile and a.tags() == b.tags()
    layers = [name for name, _ in pyogrio.list_layers(tmp_path / "cli" / "scene.gpkg")]
    assert layers == [name for name, _ in pyogrio.list_layers(result.outputs["gpkg"])]
    # A list of class entries is the same class list.
    again = geogla.segment(
        scene_tif, ["building", "tree|forest"], tmp_path / "api", model="tiny", weights="random"
    )
    assert again.resumed


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"crop": 0}, "--crop must be"),
        ({"stride": 0}, "--stride must lie"),
        ({"stride": 300}, "--stride must lie"),
        ({"logit_scale": -1.0}, "--logit-scale must be"),
        ({"model": "nope"}, "Unknown model preset"),
    ],
)
def test_segment_makes_every_check_the_command_makes(
    scene_tif: Path, tmp_path: Path, option: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        geogla.segment(scene_tif, "a,b", tmp_path / "out", weights="random", **option)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()  # nothing written
    assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(tmp_path / "out"), *TINY,
                 *[f"--{k.replace('_', '-')}={v}" for k, v in option.items()]]) == 2


def test_segment_refuses_a_missing_scene_before_anything_heavy(tmp_path: Path) -> None:
    code = ("import sys, geogla\n"
            "try:\n"
            f"    geogla.segment({str(tmp_path / 'nope.tif')!r}, 'a,b', {str(tmp_path / 'out')!r})\n"
            "except geogla.UserInputError as e:\n"
            "    print(type(e).__name__, e)\n"
            "print('torch' in sys.modules, 'dask' in sys.modules)\n")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.splitlines() == [
        f"SceneError The scene {tmp_path / 'nope.tif'} does not exist.",
        "False False",
    ]
    assert not (tmp_path / "out").exists()


def test_importing_geogla_and_its_settings_needs_neither_torch_nor_dask() -> None:
    code = (
        "import sys\n"
        "import geogla, geogla.cli, geogla.api, geogla.gla, geogla.models, geogla.runconfig, geogla.store\n"
        "geogla.GLAConfig(); geogla.RunConfig\n"
        "heavy = ('torch', 'dask', 'distributed', 'open_clip', 'timm')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.strip() == "[]"
    assert callable(geogla.attend) and callable(geogla.create_model)  # imported when first asked for
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        geogla.nope  # noqa: B018


def test_version_and_verbosity(capsys: pytest.CaptureFixture[str], scene_tif: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as done:
        geogla_main_version()
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"geogla {geogla.__version__}"
    assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(tmp_path / "v"), *TINY]) == 0
    assert (
        "model tiny on cpu: CLIP random weights, VFM random weights" in capsys.readouterr().err
    )  # information
    assert main(["-q", "run", str(scene_tif), "--classes", "a,b", "-o", str(tmp_path / "q"), *TINY]) == 0
    err = capsys.readouterr().err
    assert "model tiny" not in err and "windows/s" not in err  # no information, no progress
    assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(tmp_path / "q2"), "-q", *TINY]) == 0
    assert "model tiny" not in capsys.readouterr().err


def geogla_main_version() -> None:
    from geogla.cli import build_parser

    build_parser().parse_args(["--version"])


def test_evaluate_api_refuses_bad_input_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(geogla.UserInputError, match=r"nope\.yaml"):
        geogla.evaluate("folder", tmp_path, tmp_path / "out", legend=tmp_path / "nope.yaml", weights="random",
                        model="tiny")
    with pytest.raises(geogla.UserInputError, match="No ISPRS images"):
        geogla.evaluate("vaihingen", tmp_path, tmp_path / "out", weights="random", model="tiny")
    assert not (tmp_path / "out").exists()


# -- structure ---------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """geogla's modules and the geogla modules each imports when it is imported (module level,
    outside ``if TYPE_CHECKING:``; imports inside functions run later and cannot form a cycle)."""
    files = {_module_name(p): p for p in (REPO / "geogla").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else ():
                if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                    targets = [sub.module] + [f"{sub.module}.{a.name}" for a in sub.names]
                elif isinstance(sub, ast.Import):
                    targets = [a.name for a in sub.names]
                else:
                    continue
                found |= {t for t in targets if t in files}
        # A module's own packages are initialised before it and may import it: not a cycle.
        ancestors = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
        graph[name] = found - ancestors - {name}
    return graph


def test_the_package_has_no_import_cycle() -> None:
    graph = _import_graph()
    assert "geogla.pipelines.run" in graph and not (REPO / "pipelines").exists()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_cycle_check_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a module that imports its importer is reported."""
    graph = _import_graph()
    graph["geogla.gla.config"] = graph["geogla.gla.config"] | {"geogla.gla.exact"}
    monkeypatch.setattr(sys.modules[__name__], "_import_graph", lambda: graph)
    with pytest.raises(AssertionError, match="import cycle"):
        test_the_package_has_no_import_cycle()


def test_one_function_chooses_the_attention_algorithm() -> None:
    """Only geogla.gla.config decides between window, exact and scalable attention; everything
    else asks choose_algorithm."""
    deciders = []
    for path in (REPO / "geogla").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "exact_max_tokens" in text and "def choose_algorithm" not in text:
            lines = [ln for ln in text.splitlines() if "exact_max_tokens" in ln and "<=" in ln]
            if lines:
                deciders.append(str(path))
    assert deciders == []
    uses = [
        p for p in (REPO / "geogla").rglob("*.py") if "choose_algorithm(" in p.read_text(encoding="utf-8")
    ]
    assert {p.name for p in uses} >= {"config.py", "dispatch.py", "attend.py"}
