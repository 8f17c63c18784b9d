"""geogla.models: presets, the encoders of docs/method.md section 2, text embeddings, weight resolution,
the VFM-free mode and ``geogla models``.

Most tests run on the ``tiny`` preset or shrunk variants of the real timm classes (random weights).
Every real preset is checked for shapes on the ``meta`` device (no compute) and with random
weights at crop 224 (``slow``, except the default and the VFM-free preset); one end-to-end run uses
the cheapest real architecture.  No test touches the network or the real Hugging Face cache.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub is reachable: missing weights must fail at once

import dataclasses
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geogla.errors import ConfigError, WeightsError
from geogla.models import (
    ModelPreset,
    RandomWeightsWarning,
    SegmentationModel,
    VfmSpec,
    create_model,
    describe_weights,
    find_config_file,
    get_preset,
    list_presets,
)
from geogla.models.factory import create_meta_model
from geogla.models.registry import parse_presets
from geogla.models.vfm import VfmEncoder

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vfm(model: SegmentationModel) -> VfmEncoder:
    """The model's VFM (the presets tested here have one)."""
    assert model.vfm is not None
    return model.vfm


def _tiny(seed: int = 0, **kwargs: object) -> SegmentationModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return create_model("tiny", weights="random", seed=seed, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny() -> SegmentationModel:
    return _tiny()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every weights cache at an empty folder and unset GEOGLA_WEIGHTS_DIR."""
    from huggingface_hub import constants

    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GEOGLA_WEIGHTS_DIR", raising=False)
    yield hub


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path


def _tiny_with_tag() -> ModelPreset:
    """The tiny architectures under real pretrained tags, as a preset with published weights."""
    tiny = get_preset("tiny")
    clip = dataclasses.replace(tiny.clip, pretrained="openai", quick_gelu=False)
    return dataclasses.replace(tiny, name="tiny-tagged", clip=clip, random_only=False)


# -- registry -----------------------------------------------------------------------------


def test_registry_lists_presets_and_rejects_unknown_names() -> None:
    assert find_config_file("models.yaml").is_file()
    assert {"default", "tiny"} <= set(list_presets())
    default = get_preset("default")
    assert (default.clip.arch, default.clip.pretrained, default.clip.patch) == ("ViT-B-16", "openai", 16)
    assert default.vfm is not None
    assert (default.vfm.kind, default.vfm.name, default.vfm.patch) == ("timm", "vit_base_patch8_224.dino", 8)
    assert (default.crop, default.stride, default.random_only) == (224, 112, False)
    assert default.clip.mean == OPENAI_MEAN and default.vfm.std == IMAGENET_STD
    assert get_preset("tiny").random_only
    with pytest.raises(ConfigError, match=r"known presets: default, .*, tiny"):
        create_model("nope")


PRESET_YAML = """
version: 1
presets:
  a:
    description: d
    crop: 336
    stride: 112
    clip: {arch: ViT-L-14, pretrained: openai, patch: 14, norm: openai}
    vfm: {kind: timm, name: vit_large_patch14_reg4_dinov2.lvd142m, patch: 14,
          norm: {mean: [0.4, 0.4, 0.3], std: [0.2, 0.2, 0.1]}}
"""


def test_a_new_backbone_is_an_entry_and_mistakes_are_named() -> None:
    preset = parse_presets(PRESET_YAML)["a"]
    assert preset.vfm is not None and preset.pad_to == 56 and preset.vfm.mean == (0.4, 0.4, 0.3)
    assert (
        parse_presets(PRESET_YAML.replace("crop: 336", "crop: 330"))["a"].crop == 330
    )  # any crop: windows are padded
    for bad, message in [
        (PRESET_YAML.replace("stride: 112", "stride: 400"), "larger than the crop"),
        (PRESET_YAML.replace("norm: openai", "norm: nope"), "unknown normalisation 'nope'"),
        (PRESET_YAML.replace("kind: timm", "kind: torchhub"), "not supported"),
        (PRESET_YAML.replace("stride: 112", "stride: 112\n    colour: red"), "colour are unknown"),
        (PRESET_YAML.replace("pretrained: openai", "pretrained: null"), "random_only"),
        (PRESET_YAML.replace("version: 1", "version: 2"), "version: 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_presets(bad)


# -- encoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("crop", [224, 448])
def test_tiny_shapes_and_normalised_keys(tiny: SegmentationModel, crop: int) -> None:
    x = torch.rand(2, 3, crop, crop)
    assert tiny.token_grid(crop, crop) == (crop // 8, crop // 8)
    n = crop // 8
    keys, values = tiny.encode(x)
    assert keys.shape == (2, n * n, tiny.key_dim) and values.shape == (2, n * n, tiny.value_dim)
    assert (tiny.key_dim, tiny.value_dim, tiny.embed_dim) == (64, 64, 32)
    assert keys.dtype == values.dtype == torch.float32
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(2, n * n))
    assert tiny.project(values).shape == (2, n * n, tiny.embed_dim)
    assert not any(p.requires_grad for p in tiny.clip.model.parameters())
    assert not tiny.clip.model.training and not _vfm(tiny).model.training


def test_canvases_may_be_oblong_but_whole_key_patches(tiny: SegmentationModel) -> None:
    assert tiny.token_grid(168, 224) == (21, 28)  # the keys' patch (8) sets the grid; CLIP's (16) does not
    with pytest.raises(ValueError, match="whole number of 8-pixel patches"):
        tiny.token_grid(228, 224)
    with pytest.raises(ValueError, match="whole number of 8-pixel patches"):
        tiny.encode(torch.rand(1, 3, 224, 236))
    keys, values = tiny.encode(torch.rand(1, 3, 168, 224))
    assert keys.shape == (1, 21 * 28, 64) and values.shape == (1, 21 * 28, 64)
    # CLIP keeps whole patches of the 168-pixel side, as the reference's patch embedding does.
    assert tiny.clip.grid(168, 224) == (10, 14)


def test_clip_value_path_matches_a_manual_recomputation(tiny: SegmentationModel,
                                                        images: torch.Tensor) -> None:
    """With identity attention the output is out_proj(v) -> ln_post -> proj, v from ln_1 of the last block."""
    visual = tiny.clip.model.visual
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        x = visual.conv1((images - mean) / std).flatten(2).transpose(1, 2)  # (B, 196, W)
        cls = visual.class_embedding.expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        width = x.shape[-1]
        w_v = last.attn.in_proj_weight[2 * width:]
        b_v = last.attn.in_proj_bias[2 * width:]
        v = (last.ln_1(x) @ w_v.T + b_v)[:, 1:]  # class token normalised with the rest, then dropped
        expected = visual.ln_post(last.attn.out_proj(v)) @ visual.proj

    on_clip_grid = tiny.encode_values(images, on_vfm_grid=False)
    torch.testing.assert_close(on_clip_grid, v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiny.project(on_clip_grid), expected, rtol=1e-5, atol=1e-5)

    # On the VFM grid: the 14 x 14 values resized bilinearly to 28 x 28.
    grid = v.transpose(1, 2).reshape(2, width, 14, 14)
    resized = F.interpolate(grid, size=(28, 28), mode="bilinear", align_corners=False)
    resized = resized.flatten(2).transpose(1, 2)
    torch.testing.assert_close(tiny.encode(images)[1], resized, rtol=1e-5, atol=1e-5)


def test_vfm_keys_are_timm_patch_tokens_normalised(tiny: SegmentationModel, images: torch.Tensor) -> None:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens = _vfm(tiny).model.forward_features((images - mean) / std)
    assert tokens.shape == (2, 1 + 28 * 28, 64)  # class token first
    torch.testing.assert_close(tiny.encode_keys(images), F.normalize(tokens[:, 1:], dim=-1))


def _column_grid(trained: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(1, width, trained, trained)`` grid whose columns hold distinct values, and those values."""
    values = torch.randn(trained, generator=torch.Generator().manual_seed(trained), dtype=torch.float64)
    return values.float().view(1, 1, 1, trained).expand(1, width, trained, trained), values


def _reference_columns(values: torch.Tensor, out: int) -> torch.Tensor:
    """The reference's ``interpolate(..., scale_factor=(out + 0.1) / M, mode='bicubic')`` along one
    axis, written out: output column ``i`` samples ``(i + 0.5) * M / (out + 0.1) - 0.5`` (not
    ``... / out``) with torch's cubic convolution (a = -0.75, no antialiasing, edge indices clamped)."""
    m = values.numel()
    src = (torch.arange(out, dtype=torch.float64) + 0.5) * (m / (out + 0.1)) - 0.5
    base = torch.floor(src)
    t = src - base

    def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
        return ((-0.75 + 2) * x - (-0.75 + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
        return ((-0.75 * x - 5 * -0.75) * x + 8 * -0.75) * x - 4 * -0.75

    weights = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)])
    taps = torch.stack([(base + k).clamp(0, m - 1).long() for k in (-1, 0, 1, 2)])
    return (weights * values[taps]).sum(dim=0)


@pytest.mark.parametrize("grid", [(14, 14), (21, 21), (28, 28), (7, 7), (10, 14), (3, 17)])
def test_clip_positional_embedding_is_resampled_like_the_reference(grid: tuple[int, int]) -> None:
    """ProxyCLIP's open_clip/transformer.py, interpolate_pos_encoding: bicubic, scale factor
    (n + 0.1) / 14, no antialiasing; the trained 14 x 14 grid itself is left alone."""
    model = _tiny()
    visual = model.clip.model.visual
    width = visual.positional_embedding.shape[1]
    columns, values = _column_grid(14, width)
    with torch.no_grad():
        visual.positional_embedding[1:] = columns.permute(0, 2, 3, 1).reshape(196, width)
    with torch.inference_mode():
        pos = model.clip.positional_embedding(grid)
    assert pos.shape == (1 + grid[0] * grid[1], width)
    assert torch.equal(pos[0], visual.positional_embedding[0])  # the class position is kept
    got = pos[1:].reshape(*grid, width)[grid[0] // 2, :, 0].double()
    if grid == (14, 14):
        assert torch.equal(got, values.float().double())  # not interpolated at all
        return
    torch.testing.assert_close(got, _reference_columns(values, grid[1]), rtol=0, atol=1e-5)
    if grid[1] != 14:  # ... which a resize to the target size would not give
        resized = F.interpolate(columns, size=grid, mode="bicubic", align_corners=False)
        assert (resized[0, 0, 0].double() - got).abs().max() > 1e-3


@pytest.mark.parametrize("grid", [(28, 28), (14, 14), (42, 42), (21, 28), (56, 56)])
def test_dino_positional_embedding_is_resampled_like_the_reference(grid: tuple[int, int]) -> None:
    """DINO's vision_transformer.py, interpolate_pos_encoding (w0 + 0.1 over sqrt(N), bicubic, no
    antialiasing) replaces timm's antialiased resize; the trained 28 x 28 grid is left alone."""
    model = _tiny()
    vit = _vfm(model).model
    width = vit.pos_embed.shape[-1]
    columns, values = _column_grid(28, width)
    with torch.no_grad():
        vit.pos_embed[:, 1:] = columns.permute(0, 2, 3, 1).reshape(1, 784, width)
        vit.pos_embed[:, 0] = 7.0
    with torch.inference_mode():
        tokens = vit._pos_embed(torch.zeros(1, *grid, width))
    assert tokens.shape == (1, 1 + grid[0] * grid[1], width)
    assert torch.equal(tokens[0, 0], vit.cls_token[0, 0] + 7.0)  # the class token with its own position
    got = tokens[0, 1:].reshape(*grid, width)[grid[0] // 2, :, 0].double()
    if grid == (28, 28):
        assert torch.equal(got, values.float().double())
    else:
        torch.testing.assert_close(got, _reference_columns(values, grid[1]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("crop", [112, 336, 448])
def test_keys_at_other_crops_use_the_reference_positions(crop: int, images: torch.Tensor) -> None:
    """End to end through timm's blocks: the keys equal a forward pass built by hand with the
    reference's positional embedding."""
    from geogla.models.positions import resample_grid

    model = _tiny()
    vit = _vfm(model).model
    x = F.interpolate(images[:1], size=(crop, crop), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    n = crop // 8
    with torch.inference_mode():
        patches = vit.patch_embed.proj((x - mean) / std).flatten(2).transpose(1, 2)
        grid = vit.pos_embed[:, 1:].reshape(1, 28, 28, -1).permute(0, 3, 1, 2)
        pos = resample_grid(grid, (n, n)).permute(0, 2, 3, 1).reshape(1, n * n, -1)
        tokens = torch.cat([vit.cls_token + vit.pos_embed[:, :1], patches + pos], dim=1)
        for block in vit.blocks:
            tokens = block(tokens)
        expected = F.normalize(vit.norm(tokens)[:, 1:], dim=-1)
    torch.testing.assert_close(model.encode_keys(x), expected, rtol=1e-5, atol=1e-5)


def test_text_embeddings_average_the_80_templates(tiny: SegmentationModel) -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    text = tiny.embed_text(["building", "tree"])
    assert text.shape == (2, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    with torch.inference_mode():  # independently: open_clip's own encode_text on the full context
        tokens = tiny.clip.tokenizer([t("tree") for t in OPENAI_IMAGENET_TEMPLATES])
        each = F.normalize(tiny.clip.model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(text[1], F.normalize(each.mean(dim=0), dim=0), rtol=1e-5, atol=1e-5)
    assert tiny.embed_text([]).shape == (0, 32)


# -- random weights -----------------------------------------------------------------------


def test_random_weights_are_reproducible_and_loudly_flagged(images: torch.Tensor) -> None:
    with pytest.warns(RandomWeightsWarning, match="meaningless"):
        first = create_model("tiny", weights="random")
    second, other = _tiny(seed=0), _tiny(seed=1)
    assert first.random_weights and first.weights["clip"].origin == "random"
    for a, b in zip(first.encode(images), second.encode(images), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.embed_text(["road"]), second.embed_text(["road"]))
    assert not torch.equal(first.encode_keys(images), other.encode_keys(images))


def test_pretrained_on_a_random_only_preset_asks_for_random() -> None:
    with pytest.raises(ConfigError, match="--weights random"):
        create_model("tiny", weights="pretrained")
    with pytest.raises(ConfigError, match="'pretrained' or 'random'"):
        create_model("tiny", weights="fake")


# -- weight resolution --------------------------------------------------------------------


def test_explicit_weight_files_are_loaded(tiny: SegmentationModel, images: torch.Tensor,
                                          tmp_path: Path) -> None:
    clip_file = tmp_path / "clip.pt"
    torch.save(tiny.clip.model.state_dict(), clip_file)
    vfm_file = _save_safetensors(_vfm(tiny).model.state_dict(), tmp_path / "vfm.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)  # nothing random is left
        loaded = create_model("tiny", weights="random", seed=7, clip_weights=clip_file,
                              vfm_weights=str(vfm_file))
    assert (loaded.weights["clip"].origin, loaded.weights["clip"].path) == ("explicit path", clip_file)
    assert not loaded.random_weights
    for a, b in zip(tiny.encode(images), loaded.encode(images), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(tiny.embed_text(["car"]), loaded.embed_text(["car"]), rtol=0, atol=0)


def test_openai_torchscript_release_is_loaded(tiny: SegmentationModel, images: torch.Tensor,
                                               tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; OpenAI's files are TorchScript
        torch.jit.script(tiny.clip.model).save(str(tmp_path / "ViT-B-16.pt"))
    loaded = _tiny(seed=5, clip_weights=tmp_path / "ViT-B-16.pt")
    torch.testing.assert_close(loaded.encode_values(images), tiny.encode_values(images), rtol=0, atol=0)


def test_missing_or_broken_weight_files_raise_weights_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(WeightsError, match=r"nowhere\.safetensors"):
        _tiny(clip_weights=missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pt cannot be loaded"):
        _tiny(vfm_weights=junk)
    with pytest.raises(WeightsError, match=r"junk\.pt cannot be loaded"):
        _tiny(clip_weights=junk)


def test_offline_pretrained_without_weights_fails_at_once(empty_caches: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(WeightsError) as caught:
        create_model("default", weights="pretrained")
    assert time.perf_counter() - start < 5.0  # no retries, no model built
    message = str(caught.value)
    for part in ("CLIP ViT-B-16 (openai)", "vit_base_patch8_224.dino", "--clip-weights PATH",
                 "$GEOGLA_WEIGHTS_DIR/clip/ViT-B-16-openai.safetensors", "--weights random"):
        assert part in message
    assert message.count(".") >= 1 and "\n" not in message
    described = describe_weights(get_preset("default"))
    assert "--weights random" in described and "default" in described


def test_weights_dir_layout_is_used(tiny: SegmentationModel, images: torch.Tensor, tmp_path: Path,
                                    empty_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = _tiny_with_tag()
    root = tmp_path / "weights"
    torch.save(tiny.clip.model.state_dict(), _dir(root / "clip") / "ViT-B-16-openai.pt")
    _save_safetensors(_vfm(tiny).model.state_dict(), root / "vfm" / "vit_small_patch8_224.dino.safetensors")
    monkeypatch.setenv("GEOGLA_WEIGHTS_DIR", str(root))
    model = create_model(preset, weights="pretrained")
    assert model.weights["clip"].origin == model.weights["vfm"].origin == "GEOGLA_WEIGHTS_DIR"
    torch.testing.assert_close(model.encode_keys(images), tiny.encode_keys(images), rtol=0, atol=0)
    assert "ViT-B-16-openai.pt" in describe_weights(preset)
    monkeypatch.setenv("GEOGLA_WEIGHTS_DIR", str(tmp_path / "absent"))
    with pytest.raises(WeightsError, match="is not a folder"):
        create_model(preset, weights="pretrained")


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hub_snapshot(hub: Path, repo: str) -> Path:
    """A Hugging Face cache entry for ``repo`` laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = hub / f"models--{repo.replace('/', '--')}"
    _dir(entry / "refs")
    (entry / "refs" / "main").write_text(commit)
    return _dir(entry / "snapshots" / commit)


def test_library_caches_are_used_offline(tiny: SegmentationModel, images: torch.Tensor,
                                         empty_caches: Path) -> None:
    preset = _tiny_with_tag()
    _save_safetensors(tiny.clip.model.state_dict(),
                      _hub_snapshot(empty_caches, "timm/vit_base_patch16_clip_224.openai")
                      / "open_clip_model.safetensors")
    _save_safetensors(_vfm(tiny).model.state_dict(),
                      _hub_snapshot(empty_caches, "timm/vit_small_patch8_224.dino") / "model.safetensors")
    model = create_model(preset, weights="pretrained")
    assert model.weights["clip"].origin == model.weights["vfm"].origin == "library cache"
    for a, b in zip(tiny.encode(images), model.encode(images), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "library cache" in describe_weights(preset)


# -- devices ------------------------------------------------------------------------------


def test_devices() -> None:
    from geogla.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="Unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            create_model("tiny", weights="random", device="cuda")


# -- the real architectures ---------------------------------------------------------------


def test_default_architectures_with_random_weights() -> None:
    with pytest.warns(RandomWeightsWarning):
        model = create_model("default", weights="random")
    assert (model.key_dim, model.value_dim, model.embed_dim) == (768, 768, 512)
    assert model.token_grid(224, 224) == (28, 28)
    window = torch.rand(1, 3, 224, 224)
    start = time.perf_counter()
    keys, values = model.encode(window)
    features = model.project(values)
    seconds = time.perf_counter() - start
    assert keys.shape == (1, 784, 768) and values.shape == (1, 784, 768)
    assert features.shape == (1, 784, 512)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(1, 784))
    print(f"default architectures: {seconds:.2f} s per 224 window (encode + project)")


# -- backbone presets ---------------------------------------------------------------------

#: The real presets: CLIP architecture, VFM timm name (None: keys from CLIP's queries), key patch.
REAL_PRESETS: dict[str, tuple[str, str | None, int]] = {
    "default": ("ViT-B-16", "vit_base_patch8_224.dino", 8),
    "clip-b32-dino-b8": ("ViT-B-32", "vit_base_patch8_224.dino", 8),
    "clip-l14-dino-b8": ("ViT-L-14", "vit_base_patch8_224.dino", 8),
    "clip-b16-dino-b16": ("ViT-B-16", "vit_base_patch16_224.dino", 16),
    "clip-b16-dinov2-l14-reg": ("ViT-B-16", "vit_large_patch14_reg4_dinov2.lvd142m", 14),
    "clip-b16-dinov3-b16": ("ViT-B-16", "vit_base_patch16_dinov3.lvd1689m", 16),
    "clip-b16-dinov3-l16-sat": ("ViT-B-16", "vit_large_patch16_dinov3.sat493m", 16),
    "clearclip-b16": ("ViT-B-16", None, 16),
}
#: Key, value and embedding widths of each real preset.
DIMS = {"default": (768, 768, 512), "clip-b32-dino-b8": (768, 768, 512), "clip-l14-dino-b8": (768, 1024, 768),
        "clip-b16-dino-b16": (768, 768, 512), "clip-b16-dinov2-l14-reg": (1024, 768, 512),
        "clip-b16-dinov3-b16": (768, 768, 512), "clip-b16-dinov3-l16-sat": (1024, 768, 512),
        "clearclip-b16": (768, 768, 512)}


def _quiet(preset: str | ModelPreset, **kwargs: object) -> SegmentationModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return create_model(preset, **kwargs)  # type: ignore[arg-type]


def test_every_backbone_is_a_preset_with_published_weights() -> None:
    import open_clip
    import timm

    assert set(REAL_PRESETS) | {"tiny"} <= set(list_presets())
    for name, (arch, vfm, patch) in REAL_PRESETS.items():
        preset = get_preset(name)
        assert (preset.clip.arch, preset.clip.pretrained, preset.random_only) == (arch, "openai", False)
        assert "openai" in open_clip.list_pretrained_tags_by_model(arch)
        assert (preset.vfm.name if preset.vfm else None) == vfm
        assert preset.key_patch == patch and preset.pad_to % patch == 0 and preset.crop % patch == 0
        assert preset.clip.mean == OPENAI_MEAN
        if preset.vfm is not None:
            assert timm.is_model(preset.vfm.name) and timm.models.get_pretrained_cfg(preset.vfm.name)
            assert preset.vfm.layer == -1 and preset.keys == "vfm" and not preset.attention
    sat = get_preset("clip-b16-dinov3-l16-sat").vfm
    assert sat is not None and sat.mean == (0.430, 0.411, 0.296)  # SAT-493M statistics, not ImageNet's
    clear = get_preset("clearclip-b16")
    assert clear.keys == "clip-q" and dict(clear.attention) == {"smoothing": True}


@pytest.mark.parametrize("name", list(REAL_PRESETS))
def test_preset_shapes_and_grids_at_224_336_448(name: str) -> None:
    """On the meta device: the real architectures' output shapes, no compute."""
    model = create_meta_model(name)
    key_dim, value_dim, embed_dim = DIMS[name]
    patch = REAL_PRESETS[name][2]
    assert (model.key_dim, model.value_dim, model.embed_dim) == DIMS[name]
    for crop in (224, 336, 448):
        n = crop // patch
        x = torch.empty(2, 3, crop, crop, device="meta")
        assert model.token_grid(crop, crop) == (n, n)
        keys, values = model.encode(x)
        assert keys.shape == (2, n * n, key_dim) and values.shape == (2, n * n, value_dim)
        assert model.project(values).shape == (2, n * n, embed_dim)
        clip_side = crop // model.preset.clip.patch  # B/32 at 336: whole patches only, 10 x 10
        assert model.clip.grid(crop, crop) == (clip_side, clip_side)
    with pytest.raises(ValueError, match=f"whole number of {patch}-pixel patches"):
        model.token_grid(224 + patch // 2, 224)


def _manual_ln1(model: SegmentationModel, images: torch.Tensor) -> torch.Tensor:
    """``ln_1`` of the tokens entering CLIP's last block, class token included, computed by hand."""
    visual = model.clip.model.visual
    mean = torch.tensor(model.preset.clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preset.clip.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        x = visual.conv1((images - mean) / std).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        ln1: torch.Tensor = visual.transformer.resblocks[-1].ln_1(x)
        return ln1


def test_canvas_off_clips_patch_is_cut_to_whole_patches_for_clip(tiny: SegmentationModel) -> None:
    """A 280-pixel canvas (35 DINO tokens) is not a multiple of CLIP's 16: as in the reference,
    CLIP's patch embedding keeps 17 whole patches (272 pixels), and those values are resized to
    the 35 x 35 key grid."""
    x = torch.rand(1, 3, 280, 280, generator=torch.Generator().manual_seed(3))
    assert (tiny.clip.grid(280, 280), tiny.token_grid(280, 280)) == ((17, 17), (35, 35))
    on_clip = tiny.encode_values(x, on_vfm_grid=False)
    torch.testing.assert_close(
        on_clip, tiny.encode_values(x[..., :272, :272].contiguous(), on_vfm_grid=False)
    )
    grid = on_clip.transpose(1, 2).reshape(1, -1, 17, 17)
    resized = F.interpolate(grid, size=(35, 35), mode="bilinear", align_corners=False)
    resized = resized.flatten(2).transpose(1, 2)
    keys, values = tiny.encode(x)
    assert keys.shape == (1, 35 * 35, 64)
    torch.testing.assert_close(values, resized)


# -- VFMs with registers and RoPE, and the feature layer ---------------------------------


@pytest.mark.parametrize(("name", "patch"), [("vit_small_patch14_reg4_dinov2.lvd142m", 14),
                                             ("vit_base_patch16_dinov3.lvd1689m", 16)])
def test_register_and_rope_vfms_give_their_patch_tokens(name: str, patch: int) -> None:
    """The real timm classes (DINOv2 with registers; DINOv3: RoPE, registers), shrunk: the keys are
    exactly the patch tokens timm itself splits off the class and register tokens."""
    tiny = get_preset("tiny")
    vfm = VfmSpec(kind="timm", name=name, patch=patch, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  kwargs={"embed_dim": 64, "depth": 2, "num_heads": 4})
    model = _quiet(dataclasses.replace(tiny, name=f"tiny-{name}", vfm=vfm), weights="random")
    assert model.vfm is not None and model.vfm.num_prefix_tokens == 5  # class + 4 registers
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for crop in (224, 336, 448):
        x = torch.rand(1, 3, crop, crop, generator=torch.Generator().manual_seed(crop))
        n = crop // patch
        keys, values = model.encode(x)
        assert model.token_grid(crop, crop) == (n, n)
        assert keys.shape == (1, n * n, 64) and values.shape == (1, n * n, 64)
        with torch.inference_mode():
            (patches,) = _vfm(model).model.forward_intermediates((x - mean) / std, indices=[1], norm=True,
                                                               output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(keys, F.normalize(patches, dim=-1))
        torch.testing.assert_close(keys.norm(dim=-1), torch.ones(1, n * n))


def test_vfm_layer_picks_a_block_before_the_final_norm(tiny: SegmentationModel, images: torch.Tensor) -> None:
    preset = get_preset("tiny")
    assert preset.vfm is not None
    first = _quiet(dataclasses.replace(preset, vfm=dataclasses.replace(preset.vfm, layer=0)),
                   weights="random")
    assert first.vfm is not None and (first.vfm.layer, first.vfm.depth) == (0, 2)
    vit = _vfm(first).model
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():  # block 0's output, through the final norm, class token dropped
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed((images - mean) / std)))
        expected = F.normalize(vit.norm(vit.blocks[0](x))[:, 1:], dim=-1)
    torch.testing.assert_close(first.encode_keys(images), expected)
    assert not torch.allclose(first.encode_keys(images), tiny.encode_keys(images))  # same weights, last block
    for layer in (2, -3):
        outside = dataclasses.replace(preset, vfm=dataclasses.replace(preset.vfm, layer=layer))
        with pytest.raises(ConfigError, match="has 2 blocks"):
            _quiet(outside, weights="random")


# -- the VFM-free mode ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_q() -> SegmentationModel:
    """The tiny CLIP without a VFM: keys from its last-block queries."""
    preset = dataclasses.replace(get_preset("tiny"), name="tiny-clip-q", vfm=None,
                                 attention={"smoothing": True})
    return _quiet(preset, weights="random")


def test_without_vfm_keys_are_clips_normalised_last_block_queries(tiny_q: SegmentationModel,
                                                                 images: torch.Tensor) -> None:
    h = _manual_ln1(tiny_q, images)  # class token normalised with the rest
    attn = tiny_q.clip.model.visual.transformer.resblocks[-1].attn
    width = h.shape[-1]
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = (h @ w[:width].T + b[:width])[:, 1:]
    v = (h @ w[2 * width:].T + b[2 * width:])[:, 1:]
    keys, values = tiny_q.encode(images)
    assert tiny_q.vfm is None and tiny_q.preset.keys == "clip-q" and set(tiny_q.weights) == {"clip"}
    assert tiny_q.token_grid(224, 224) == (14, 14) and tiny_q.key_dim == tiny_q.value_dim == 64
    assert keys.shape == values.shape == (2, 196, 64)  # both on CLIP's grid
    torch.testing.assert_close(keys, F.normalize(q, dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(2, 196))
    torch.testing.assert_close(values, v, rtol=1e-5, atol=1e-5)
    assert torch.equal(tiny_q.encode_keys(images), keys) and torch.equal(tiny_q.encode_values(images), values)
    assert tiny_q.project(values).shape == (2, 196, 32)
    assert tiny_q.preset.pad_to == 112  # the canvases are whole CLIP patches, which give the keys here
    with pytest.raises(ValueError, match="whole number of 16-pixel patches"):
        tiny_q.token_grid(232, 232)


def test_without_vfm_only_clip_weights_are_needed(tiny_q: SegmentationModel, images: torch.Tensor,
                                                  tmp_path: Path) -> None:
    clip_file = _save_safetensors(tiny_q.clip.model.state_dict(), tmp_path / "clip.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)  # nothing random is left
        loaded = create_model(tiny_q.preset, weights="pretrained", clip_weights=clip_file)
    assert not loaded.random_weights and loaded.weights["clip"].path == clip_file
    torch.testing.assert_close(loaded.encode_keys(images), tiny_q.encode_keys(images), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="has no VFM"):
        create_model(tiny_q.preset, weights="random", vfm_weights=clip_file)
    assert "no VFM" in describe_weights(tiny_q.preset)


FREE_YAML = """
version: 1
presets:
  q:
    description: d
    crop: 224
    stride: 112
    clip: {arch: ViT-B-16, pretrained: openai, patch: 16, norm: openai}
    vfm: none
    attention: {smoothing: true, rho: 0.5}
"""


def test_vfm_free_entries_layers_and_attention_overrides_are_parsed() -> None:
    preset = parse_presets(FREE_YAML)["q"]
    assert preset.vfm is None and (preset.keys, preset.key_patch) == ("clip-q", 16)
    assert dict(preset.attention) == {"smoothing": True, "rho": 0.5}
    assert parse_presets(FREE_YAML.replace("vfm: none", "vfm: null"))["q"].vfm is None
    layered = PRESET_YAML.replace("lvd142m, patch: 14,", "lvd142m, patch: 14, layer: -4,")
    vfm = parse_presets(layered)["a"].vfm
    assert vfm is not None and vfm.layer == -4
    for bad, message in [
        (FREE_YAML.replace("rho: 0.5", "colour: red"), "colour are unknown"),
        (FREE_YAML.replace("smoothing: true", "smoothing: maybe"), "smoothing must be true or false"),
        (FREE_YAML.replace("crop: 224", "crop: 0"), "positive integer"),
        (FREE_YAML.replace("stride: 112", "stride: 300"), "larger than the crop"),
        (layered.replace("layer: -4", "layer: last"), "whole number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_presets(bad)


def test_preset_attention_overrides_apply_and_explicit_options_win() -> None:
    from geogla.gla import GLAConfig
    from geogla.runconfig import attention_config

    assert attention_config("clearclip-b16") == GLAConfig(smoothing=True)
    assert attention_config("clearclip-b16", "proxyclip") == GLAConfig.proxyclip(smoothing=True)
    assert attention_config("clearclip-b16", smoothing=False) == GLAConfig()
    assert attention_config("default", smoothing=None) == GLAConfig()
    assert attention_config("default", "proxyclip", smoothing=True) == GLAConfig.proxyclip(smoothing=True)
    with pytest.raises(ConfigError, match="Unknown attention mode"):
        attention_config("default", "both")


class _Captured(BaseException):
    """Raised by a stand-in for run_scene, carrying the run configuration the command built (a
    BaseException, so that it passes the command's handler of faults)."""

    def __init__(self, config: object) -> None:
        super().__init__("captured")
        self.config = config


def test_run_command_takes_the_presets_attention_unless_told_otherwise(
        scene_tif: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import geogla.pipelines.plan
    import geogla.pipelines.run
    from geogla.cli import main

    def capture(plan: geogla.pipelines.plan.RunPlan, **kwargs: object) -> None:
        raise _Captured(plan.config)

    monkeypatch.setattr(geogla.pipelines.run, "execute", capture)
    for model, extra, smoothing in [("clearclip-b16", [], True), ("clearclip-b16", ["--no-smoothing"], False),
                                    ("default", [], False), ("default", ["--smoothing"], True)]:
        with pytest.raises(_Captured) as caught:
            main(["run", str(scene_tif), "--classes", "a,b", "-o", str(tmp_path / "out"), "--model", model,
                  "--weights", "random", *extra])
        assert caught.value.config.attention.smoothing is smoothing  # type: ignore[attr-defined]
    # A crop or stride of 0 is refused before anything is built or written (not taken as "the preset's").
    for option in ("--crop", "--stride"):
        assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(tmp_path / "out"), "--model",
                     "clearclip-b16", "--weights", "random", option, "0"]) == 2
        assert f"{option} must" in capsys.readouterr().err


def test_vfm_free_preset_runs_end_to_end(tmp_path: Path) -> None:
    """``geogla run`` with the cheapest real architecture (CLIP ViT-B/16 alone), random weights."""
    import rasterio

    from geogla.cli import main
    from geogla.store import RunStore
    from tests.conftest import structured_rgb, write_geotiff

    scene = write_geotiff(tmp_path / "small.tif", structured_rgb(224, 336))  # 1 x 2 overlapping windows
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(["run", str(scene), "--classes", "building,tree,road", "-o", str(out), "--model",
                 "clearclip-b16", "--weights", "random", "--quiet"])
    assert code == 0
    with rasterio.open(out / "small.classes.tif") as ds:
        assert ds.shape == (224, 336) and set(np.unique(ds.read(1))) <= {0, 1, 2}
    store = RunStore.open(str(out / "small.zarr"), "r")
    assert store.config.attention.smoothing and store.token_grid == (14, 14)
    assert store.array("keys").shape == (2, 196, 768) and store.array("values").shape == (2, 196, 768)
    print(f"clearclip-b16 end to end: {time.perf_counter() - start:.1f} s")


# -- real architectures with random weights -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in REAL_PRESETS if n != "default"])  # default: see above
def test_real_presets_with_random_weights(name: str) -> None:
    model = _quiet(name, weights="random")
    key_dim, value_dim, embed_dim = DIMS[name]
    n = 224 // REAL_PRESETS[name][2]
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    keys, values = model.encode(x)
    seconds = time.perf_counter() - start
    assert keys.shape == (1, n * n, key_dim) and values.shape == (1, n * n, value_dim)
    assert model.project(values).shape == (1, n * n, embed_dim)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(1, n * n))
    # On the key grid the values are CLIP's own-grid values resized bilinearly.
    side = model.clip.grid(224, 224)[0]
    grid = model.encode_values(x, on_vfm_grid=False).transpose(1, 2).reshape(1, value_dim, side, side)
    resized = F.interpolate(grid, size=(n, n), mode="bilinear", align_corners=False)
    resized = resized.flatten(2).transpose(1, 2)
    torch.testing.assert_close(values, resized, rtol=1e-4, atol=1e-4)
    print(f"{name}: {seconds:.2f} s for a first (cold) encode of one 224 window")


# -- geogla models ------------------------------------------------------------------------------


def test_summaries_count_the_built_models(tiny: SegmentationModel) -> None:
    from geogla.models.listing import summarize

    small = summarize("tiny")
    clip_params = sum(p.numel() for p in tiny.clip.model.parameters())
    assert small.clip_image_params + small.clip_text_params == clip_params
    assert tiny.vfm is not None and small.vfm_params == sum(p.numel() for p in _vfm(tiny).model.parameters())
    # 16 bits a number (and a float32 scale per key token); the values on CLIP's 14 x 14 grid, the
    # keys and features on DINO's 28 x 28
    assert small.window_bytes == (784 * (64 * 2 + 4), 196 * 64 * 2, 784 * 32 * 2)
    default = summarize("default")  # OpenAI CLIP ViT-B/16 and DINO ViT-B/8, as published
    clip_params = default.clip_image_params + default.clip_text_params
    assert (clip_params, default.vfm_params) == (149_620_737, 85_807_872)
    assert summarize("clearclip-b16").vfm_params == 0


def test_models_command_lists_presets_sizes_and_weights(
        capsys: pytest.CaptureFixture[str], empty_caches: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from geogla.cli import main

    root = tmp_path / "weights"
    (_dir(root / "clip") / "ViT-B-16-openai.safetensors").write_bytes(b"only looked up, never loaded")
    monkeypatch.setenv("GEOGLA_WEIGHTS_DIR", str(root))
    start = time.perf_counter()
    assert main(["models"]) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    for name in list_presets():
        assert f"\n{name} " in out and f"\n{name}: " in out  # a table row and a details block
    text = " ".join(out.split())  # long lines are wrapped
    assert "ViT-B-16-openai.safetensors (GEOGLA_WEIGHTS_DIR)" in text  # found
    assert "--vfm-weights PATH" in text and "hf-hub:timm/vit_base_patch8_224.dino" in text  # how to provide
    assert "none: CLIP last-block queries" in text and "smoothing=true" in text
    assert "235.4 M" in text and "2.20 MiB" in text  # default: parameters; keys + values + features
    assert "no published weights" in text  # tiny
    assert seconds < 60  # meta-device builds; real ones would take minutes here
    assert main(["models", "clearclip-b16"]) == 0
    assert "\ndefault" not in capsys.readouterr().out
    assert main(["models", "nope"]) == 2
    assert "known presets" in capsys.readouterr().err
    print(f"geogla models: {seconds:.1f} s")
