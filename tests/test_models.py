"""geogla.models: presets, the encoders of method.md section 2, text embeddings and weight resolution.

Everything runs on the ``tiny`` preset (random weights) except one test that builds the default
architectures; no test touches the network or the real Hugging Face cache.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub is reachable: missing weights must fail at once

import dataclasses
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geogla.errors import ConfigError, WeightsError
from geogla.models import (
    ModelPreset,
    RandomWeightsWarning,
    SegmentationModel,
    create_model,
    describe_weights,
    find_config_file,
    get_preset,
    list_presets,
)
from geogla.models.registry import parse_presets

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    assert (default.vfm.kind, default.vfm.name, default.vfm.patch) == ("timm", "vit_base_patch8_224.dino", 8)
    assert (default.crop, default.stride, default.random_only) == (224, 112, False)
    assert default.clip.mean == OPENAI_MEAN and default.vfm.std == IMAGENET_STD
    assert get_preset("tiny").random_only
    with pytest.raises(ConfigError, match="known presets: default, tiny"):
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
    assert preset.crop_multiple == 14 and preset.vfm.mean == (0.4, 0.4, 0.3)
    for bad, message in [
        (PRESET_YAML.replace("crop: 336", "crop: 330"), "not a multiple of 14"),
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
    n = tiny.tokens_per_side(crop)
    assert n == crop // 8
    keys, values = tiny.encode(x)
    assert keys.shape == (2, n * n, tiny.key_dim) and values.shape == (2, n * n, tiny.value_dim)
    assert (tiny.key_dim, tiny.value_dim, tiny.embed_dim) == (64, 64, 32)
    assert keys.dtype == values.dtype == torch.float32
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(2, n * n))
    assert tiny.project(values).shape == (2, n * n, tiny.embed_dim)
    assert not any(p.requires_grad for p in tiny.clip.model.parameters())
    assert not tiny.clip.model.training and not tiny.vfm.model.training


def test_crops_and_windows_are_checked(tiny: SegmentationModel) -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        tiny.tokens_per_side(200)
    with pytest.raises(ValueError, match="square"):
        tiny.encode(torch.rand(1, 3, 224, 240))


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
        tokens = tiny.vfm.model.forward_features((images - mean) / std)
    assert tokens.shape == (2, 1 + 28 * 28, 64)  # class token first
    torch.testing.assert_close(tiny.encode_keys(images), F.normalize(tokens[:, 1:], dim=-1))


@pytest.mark.parametrize(("crop", "clip_side"), [(224, 14), (336, 21), (448, 28)])
def test_positional_embedding_is_resized_bicubically(tiny: SegmentationModel, crop: int,
                                                      clip_side: int) -> None:
    trained = tiny.clip.model.visual.positional_embedding.detach()
    with torch.inference_mode():
        pos = tiny.clip.positional_embedding(clip_side)
    assert pos.shape == (1 + clip_side**2, trained.shape[1])
    torch.testing.assert_close(pos[0], trained[0])  # the class position is kept
    grid = trained[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(clip_side, clip_side), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(clip_side**2, -1))
    x = torch.rand(1, 3, crop, crop)
    assert tiny.encode_values(x, on_vfm_grid=False).shape == (1, clip_side**2, 64)
    keys, values = tiny.encode(x)
    assert keys.shape[1] == values.shape[1] == (crop // 8) ** 2


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
    vfm_file = _save_safetensors(tiny.vfm.model.state_dict(), tmp_path / "vfm.safetensors")
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
    with pytest.raises(WeightsError, match="nowhere.safetensors"):
        _tiny(clip_weights=missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt cannot be loaded"):
        _tiny(vfm_weights=junk)
    with pytest.raises(WeightsError, match="junk.pt cannot be loaded"):
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
    _save_safetensors(tiny.vfm.model.state_dict(), root / "vfm" / "vit_small_patch8_224.dino.safetensors")
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
    _save_safetensors(tiny.vfm.model.state_dict(),
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
    assert model.tokens_per_side(224) == 28
    window = torch.rand(1, 3, 224, 224)
    start = time.perf_counter()
    keys, values = model.encode(window)
    features = model.project(values)
    seconds = time.perf_counter() - start
    assert keys.shape == (1, 784, 768) and values.shape == (1, 784, 768)
    assert features.shape == (1, 784, 512)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(1, 784))
    print(f"default architectures: {seconds:.2f} s per 224 window (encode + project)")
