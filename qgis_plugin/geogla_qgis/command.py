"""Running the ``geogla`` command for QGIS: its arguments, its progress lines, cancelling it.

No QGIS import here, so that this part is tested without QGIS (tests/test_qgis_plugin.py).
"""

import os
import queue
import re
import signal
import subprocess
import threading
from dataclasses import dataclass

#: "encode 3/10 | attend 0/10, 5.2 windows/s, left: ..." -> (stage, done, total) triples
_STAGE = re.compile(r"\b([a-z_]+) (\d+)/(\d+)\b")
#: "[3/10] top_mosaic_09cm_area1: ..." (geogla eval, one line per image)
_IMAGE = re.compile(r"^\[()(\d+)/(\d+)\]")


def progress_percent(line):
    """Percent done that a geogla progress line reports (``geogla run``: tasks done over tasks of
    all stages listed; ``geogla eval``: images scored), or None for any other line."""
    pairs = _IMAGE.findall(line) or _STAGE.findall(line)
    total = sum(int(t) for _, _, t in pairs)
    if not total:
        return None
    return 100.0 * sum(int(d) for _, d, _ in pairs) / total


def segment_arguments(command, scene, classes, out, *, model="default", weights="pretrained",
                      precision="auto", gsd=None, min_area=None, simplify=None,
                      save_probabilities=False, bbox=None):
    """The ``geogla run`` command line of the "Segment raster" algorithm (progress every second);
    ``bbox``: ``(xmin, ymin, xmax, ymax)`` in the scene's CRS, or None for the whole scene."""
    argv = [command, "run", scene, "--classes", classes, "-o", out, "--model", model,
            "--weights", weights, "--precision", precision, "--progress-interval", "1"]
    if bbox is not None:
        argv += ["--bbox", ",".join(repr(float(v)) for v in bbox)]
    if gsd:
        argv += ["--gsd", repr(float(gsd))]
    if min_area:
        argv += ["--min-area", repr(float(min_area))]
    if simplify:
        argv += ["--simplify", repr(float(simplify))]
    if save_probabilities:
        argv.append("--save-probabilities")
    return argv


def eval_arguments(command, dataset, root, out, *, split=None, legend=None, attention="both", limit=0,
                   model="default", weights="pretrained"):
    """The ``geogla eval`` command line of the "Evaluate" algorithm."""
    argv = [command, "eval", dataset, "--root", root, "-o", out, "--attention", attention,
            "--model", model, "--weights", weights]
    if split:
        argv += ["--split", split]
    if legend:
        argv += ["--legend", legend]
    if limit:
        argv += ["--limit", str(int(limit))]
    return argv


@dataclass
class Outcome:
    """How a command ended: its exit code, whether it was cancelled, and its last line on
    stderr (geogla's one-sentence message for bad input, exit code 2)."""

    returncode: int
    cancelled: bool
    message: str


def run(argv, on_line, cancelled, poll=0.2, env=None):
    """Run ``argv``, passing each line it prints (stdout and stderr) to ``on_line``; stop it (its
    whole process group: geogla's local Dask workers too) as soon as ``cancelled()`` is true."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True, env=env)
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    last, stopped, ended = "", False, False
    while not ended:
        if not stopped and cancelled():
            stopped = True
            _stop(proc)
        try:
            line = lines.get(timeout=poll)
        except queue.Empty:
            continue
        if line is None:
            ended = True
        elif line.strip():
            last = line.strip()
            on_line(line)
    proc.wait()
    proc.stdout.close()
    return Outcome(proc.returncode, stopped, last)


def _stop(proc):
    """SIGTERM to the process group, SIGKILL after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
