"""Where the method's description is silent, geogla does what the authors' released code does.

Each test pins one choice against the reference's behaviour, written out here from the reference
code it names (SegEarth-OV / mmcv for the protocol's resize, ProxyCLIP's ``proxyclip_segmentor.py``
for the padding of windows, OpenCV for decoding JPEGs); the positional embeddings are pinned in
tests/test_models.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geogla import stages
from geogla.classes import parse_classes
from geogla.gla import GLAConfig, attend
from geogla.models import RandomWeightsWarning, SegmentationModel
from geogla.pipelines import evaluate
from geogla.resize import long_side_shape, resize_linear
from geogla.runconfig import RunConfig, attention_config
from geogla.scene import open_scene
from geogla.store import RunStore
from tests.conftest import structured_rgb, write_geotiff

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore::geogla.models.weights.RandomWeightsWarning")]


# -- 1. the protocol's resize --------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "size"), [
    ((512, 512), (448, 448)),    # ISPRS tiles
    ((1080, 1280), (378, 448)),  # UAVid frames
    ((3000, 4000), (336, 448)),  # VDD
    ((896, 896), (448, 448)),    # exactly half: OpenCV switches to INTER_AREA, which agrees
    ((100, 50), (448, 224)),     # upscaling
    ((37, 53), (81, 17)),        # up along one axis, down along the other
    ((1, 5), (3, 9)),
    ((509, 700), (326, 448)),
])
@pytest.mark.parametrize("bands", [1, 3])
def test_resize_equals_opencvs_inter_linear_pixel_for_pixel(shape: tuple[int, int], size: tuple[int, int],
                                                            bands: int) -> None:
    image = np.random.default_rng(sum(shape) + bands).integers(0, 256, (*shape, bands), dtype=np.uint8)
    expected = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR).reshape(*size, bands)
    got = resize_linear(np.ascontiguousarray(image.transpose(2, 0, 1)), size)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected.transpose(2, 0, 1))


def test_long_side_shape_is_mmcvs_rescale_size() -> None:
    # mmcv rescale_size with scale (448, 448): factor 448 / long side, int(side * factor + 0.5)
    assert long_side_shape((512, 512), 448) == (448, 448)
    assert long_side_shape((1080, 1280), 448) == (378, 448)
    assert long_side_shape((3000, 4000), 448) == (336, 448)
    assert long_side_shape((644, 797), 448) == (362, 448)  # 644 * 448 / 797 = 361.99 -> 362
    assert long_side_shape((10, 4000), 448) == (1, 448)


# -- 4 and 5. windows padded, centred, with the mean colour; logits cut back -----------------------------


def _reference_pad(h: int, w: int, multiple: int = 56) -> tuple[int, int, int, int]:
    """proxyclip_segmentor.py compute_padsize(H, W, 56), rewritten: (left, right, top, bottom)."""
    lr = multiple - w % multiple if w % multiple else 0
    tb = multiple - h % multiple if h % multiple else 0
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


def _reference_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """proxyclip_segmentor.py forward_slide's window loop, rewritten."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * stride + crop, height), min(j * stride + crop, width)
            boxes.append((max(y2 - crop, 0), max(x2 - crop, 0), y2, x2))
    return boxes


@pytest.fixture(scope="module")
def tiny() -> SegmentationModel:
    """The model the stages of a tiny run on the CPU use (loaded once per process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return stages.load_model("tiny", "random", None, None, "cpu")


@pytest.mark.parametrize(("shape", "crop", "stride"), [
    ((150, 500), 224, 112),  # point 5: an image lower than a window: 150-pixel windows padded to 168
    ((300, 300), 200, 100),  # point 4: a crop that is no multiple of 56 (nor of CLIP's 16): 200 -> 224
    ((90, 100), 224, 112),   # both sides smaller than a window: one 90 x 100 window on a 112 x 112 canvas
])
def test_windows_are_padded_and_their_logits_cut_like_the_reference(
        tmp_path: Path, tiny: SegmentationModel, monkeypatch: pytest.MonkeyPatch,
        shape: tuple[int, int], crop: int, stride: int) -> None:
    rgb = structured_rgb(*shape)
    scene = open_scene(str(write_geotiff(tmp_path / "s.tif", rgb)))
    config = RunConfig(
        classes=parse_classes("building,tree,road"),
        model="tiny",
        weights="random",
        device="cpu",
        precision="float32",
        crop=crop,
        stride=stride,
        attention=attention_config("tiny", "proxyclip"),
    )
    store, _ = RunStore.create_or_resume(str(tmp_path / "s.zarr"), scene, config, **tiny.store_dims())
    boxes = _reference_windows(*shape, crop, stride)
    assert store.read("windows/box").tolist() == [list(b) for b in boxes]

    seen: list[torch.Tensor] = []
    real_encode = tiny.encode

    def spy(images: torch.Tensor, values_on_clip_grid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(images.clone())
        return real_encode(images, values_on_clip_grid)

    monkeypatch.setattr(tiny, "encode", spy)
    for ids in stages.window_batches(store):
        stages.encode_windows(store.url, ids)
    stages.embed_text(store.url)
    stages.attend_all(store.url)
    canvases = torch.cat(seen)
    source = stages.StoreWindows(store, np.arange(len(boxes)))

    # The reference normalises the image for CLIP, then zero-pads each window (its mean colour),
    # centred; DINO sees that image un-normalised and normalised with ImageNet's statistics.
    image = torch.from_numpy(rgb.astype(np.float32) / 255)
    clip_mean = torch.tensor(tiny.preset.clip.mean).view(3, 1, 1)
    clip_std = torch.tensor(tiny.preset.clip.std).view(3, 1, 1)
    assert tiny.preset.vfm is not None
    vfm_mean = torch.tensor(tiny.preset.vfm.mean).view(3, 1, 1)
    vfm_std = torch.tensor(tiny.preset.vfm.std).view(3, 1, 1)
    text = torch.from_numpy(store.read("text"))
    logits = torch.zeros(len(text), *shape)
    count = torch.zeros(shape)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        left, right, top, bottom = _reference_pad(y2 - y1, x2 - x1)
        padded = F.pad((image[:, y1:y2, x1:x2] - clip_mean) / clip_std, (left, right, top, bottom))
        assert canvases[k].shape == padded.shape
        ours = (canvases[k] - clip_mean) / clip_std
        padding = torch.ones(padded.shape[1:], dtype=torch.bool)
        padding[top:top + y2 - y1, left:left + x2 - x1] = False
        assert bool(padding.any()) == (padded.shape[1:] != (y2 - y1, x2 - x1))
        assert bool((ours[:, padding] == 0).all())  # exactly the mean colour
        torch.testing.assert_close(ours, padded, rtol=0, atol=2e-6)  # float32 rounding of x - m
        torch.testing.assert_close((canvases[k] - vfm_mean) / vfm_std,
                                   (padded * clip_std + clip_mean - vfm_mean) / vfm_std, rtol=0, atol=2e-6)
        # forward_feature and forward_slide: logits on the canvas's token grid, resized to the
        # canvas, cut back to the window, summed and divided by the window count.  (The encoders'
        # outputs are taken as stored: the canvases above are what they saw.)
        keys, values = source.keys([k]), source.values([k])
        feats = F.normalize(tiny.project(attend(keys, values, GLAConfig.proxyclip())), dim=-1)[0]
        rows, cols = padded.shape[1] // 8, padded.shape[2] // 8
        grid = (feats @ text.T).T.reshape(1, len(text), rows, cols)
        up = F.interpolate(grid, size=padded.shape[1:], mode="bilinear", align_corners=False)[0]
        logits[:, y1:y2, x1:x2] += up[:, top:top + y2 - y1, left:left + x2 - x1]
        count[y1:y2, x1:x2] += 1
    expected = logits / count
    ours, covered = stages.working_logits(store, (0, 0, *shape), text)
    assert bool((covered > 0).all())
    # The store keeps features in float16: a cosine moves by at most |feature error| <= 2^-12 sqrt(E)
    # (plus float32 sums of other lengths, ~1e-7).
    bound = 2**-12 * float(np.sqrt(text.shape[1])) + 1e-5
    torch.testing.assert_close(ours, expected, rtol=0, atol=bound)


def test_nodata_pixels_reach_the_encoders_as_the_mean_colour(
        tmp_path: Path, tiny: SegmentationModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """``geogla run`` follows the reference's padding for nodata too: the encoders see CLIP's mean
    colour (0 after its normalisation), not black; the outputs keep those pixels as nodata."""
    rgb = structured_rgb(224, 336)
    rgb[:, :40, :] = 0
    scene = open_scene(str(write_geotiff(tmp_path / "n.tif", rgb, nodata=0)))
    config = RunConfig(classes=parse_classes("building,tree"), model="tiny", weights="random", device="cpu",
                       precision="float32")
    store, _ = RunStore.create_or_resume(str(tmp_path / "n.zarr"), scene, config, **tiny.store_dims())
    seen: list[torch.Tensor] = []
    real_encode = tiny.encode
    def spy(images: torch.Tensor, values_on_clip_grid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(images.clone())
        return real_encode(images, values_on_clip_grid)

    monkeypatch.setattr(tiny, "encode", spy)
    for ids in stages.window_batches(store):
        stages.encode_windows(store.url, ids)
    canvases = torch.cat(seen)
    mean = torch.tensor(tiny.pad_colour).view(3, 1)
    assert canvases.shape == (2, 3, 224, 224)
    assert torch.equal(
        canvases[:, :, :40].reshape(2, 3, -1), mean.expand(3, 40 * 224)[None].expand(2, -1, -1)
    )
    expected = torch.from_numpy(rgb[:, 40:, :224].astype(np.float32) / 255)
    assert torch.equal(canvases[0, :, 40:], expected)


# -- 6. JPEG decoding ---------------------------------------------------------------------------------------


@pytest.mark.data
def test_jpegs_are_decoded_as_opencv_decodes_them(shared_data: Path) -> None:
    """The reference reads images with OpenCV (mmcv LoadImageFromFile); geogla's evaluation decodes
    JPEGs to the same pixels.  GDAL's own JPEG decoder would not (see evaluate.read_image)."""
    import rasterio

    files = sorted((shared_data / "dubai_aerial" / "images").glob("*.jpg"))
    assert len(files) == 72
    differ_gdal = total = 0
    for path in files:
        scene = open_scene(path)
        h, w = scene.georef.shape
        ours = evaluate.read_image(scene, (0, 0, h, w))
        decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert decoded is not None
        opencv = decoded[:, :, ::-1].transpose(2, 0, 1)
        np.testing.assert_array_equal(ours, opencv)
        with rasterio.open(path) as ds:
            differ_gdal += int((ds.read() != opencv).sum())
        total += opencv.size
    # 4:2:0 chroma upsampled by libjpeg 9 (GDAL) and libjpeg-turbo (OpenCV) differently: 17% measured
    assert 0.05 < differ_gdal / total < 0.4
