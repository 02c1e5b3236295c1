"""Batched on-device augmentation against torchvision, sampling statistics, and the view recipes."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from bench.data import augment as A
from bench.data.views import RECIPES, ViewMaker, ViewSpec, build_recipe, make_view, torchvision_pipeline
from bench.errors import ConfigError

IDENTITY = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rgb_batch(batch: int = 6, height: int = 20, width: int = 24) -> torch.Tensor:
    """Random colours plus edge cases: pure primaries/secondaries (ties in the max) and gray pixels."""
    x = torch.rand(batch, 3, height, width, generator=gen(1))
    x[0] = x[0].round()
    x[1] = x[1].mean(dim=0, keepdim=True)
    return x


def per_image(op, x: torch.Tensor, params) -> torch.Tensor:
    return torch.stack([op(img, p) for img, p in zip(x, params)])


@pytest.mark.parametrize("size", [7, 16, 40])
def test_resized_crop_matches_torchvision(size):
    x = rgb_batch()
    boxes = torch.tensor([[0, 0, 20, 24], [3, 5, 9, 11], [11, 0, 9, 24], [0, 23, 20, 1], [7, 2, 4, 17], [2, 3, 16, 16]])
    ours = A.resized_crop(x, boxes, size)
    ref = torch.stack([TF.resized_crop(img, *box.tolist(), [size, size], antialias=False) for img, box in zip(x, boxes)])
    assert ours.shape == (6, 3, size, size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high"),
    [
        (A.adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (A.adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (A.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (A.adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, low, high):
    x = rgb_batch(batch=8)
    factors = torch.linspace(low, high, 8)
    ref = per_image(lambda img, f: theirs(img, f.item()), x, factors)
    torch.testing.assert_close(ours(x, factors), ref, atol=1e-5, rtol=0)


def test_one_channel_colour_ops():
    x = torch.rand(4, 1, 9, 9, generator=gen())
    f = torch.tensor([0.3, 0.8, 1.2, 1.9])
    assert torch.equal(A.adjust_saturation(x, f), x)
    assert torch.equal(A.adjust_hue(x, f - 1.0), x)
    torch.testing.assert_close(A.adjust_contrast(x, f), per_image(lambda i, v: TF.adjust_contrast(i, v.item()), x, f))
    assert torch.equal(A.grayscale(x), x)


def test_color_jitter_is_the_fixed_sequence_of_torchvision_ops():
    x = rgb_batch(batch=4)
    b, c, s, h = torch.tensor([0.5, 1.5, 0.9, 1.2]), torch.tensor([1.3, 0.6, 1.0, 0.2]), torch.tensor([0.0, 1.8, 1.1, 0.7]), torch.tensor([0.1, -0.3, 0.5, 0.0])
    ref = []
    for i in range(4):
        img = TF.adjust_brightness(x[i], b[i].item())
        img = TF.adjust_contrast(img, c[i].item())
        img = TF.adjust_saturation(img, s[i].item())
        ref.append(TF.adjust_hue(img, h[i].item()))
    torch.testing.assert_close(A.color_jitter(x, (b, c, s, h)), torch.stack(ref), atol=1e-5, rtol=0)
    assert torch.equal(A.color_jitter(x, (None, None, None, None)), x)


def test_grayscale_and_solarize_match_torchvision():
    x = rgb_batch()
    torch.testing.assert_close(A.grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6, rtol=0)
    edge = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0]).view(1, 1, 1, 5)
    assert torch.equal(A.solarize(edge), torch.tensor([0.0, 0.49, 0.5, 0.49, 0.0]).view(1, 1, 1, 5))
    torch.testing.assert_close(A.solarize(x), TF.solarize(x, 0.5))


@pytest.mark.parametrize(("channels", "kernel"), [(3, 3), (3, 9), (1, 5)])
def test_gaussian_blur_matches_torchvision(channels, kernel):
    x = torch.rand(4, channels, 12, 15, generator=gen())
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    ref = per_image(lambda img, s: TF.gaussian_blur(img, [kernel, kernel], [s.item(), s.item()]), x, sigma)
    torch.testing.assert_close(A.gaussian_blur(x, sigma, kernel), ref, atol=1e-5, rtol=0)


def test_normalize():
    x = torch.full((2, 3, 2, 2), 0.6)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = torch.tensor([(0.6 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    torch.testing.assert_close(A.normalize(x, mean, std), expected)


def test_crop_boxes_within_bounds_and_distributed_like_torchvision():
    size, n, scale, ratio = 224, 4096, (0.08, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = A.sample_crop_boxes(n, size, size, scale, ratio, gen()).unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    area = (h * w).double() / size**2
    aspect = w.double() / h.double()
    assert area.min() >= scale[0] * 0.97 and area.max() <= 1.0
    assert aspect.min() >= ratio[0] * 0.97 and aspect.max() <= ratio[1] * 1.03

    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(1, size, size), scale, ratio) for _ in range(n)])
    ref_area = (ref[:, 2] * ref[:, 3]).double() / size**2
    assert abs(area.mean() - ref_area.mean()) < 0.03 * ref_area.mean()
    assert abs(area.std() - ref_area.std()) < 0.05 * ref_area.std()
    assert abs(aspect.log().mean() - (ref[:, 3] / ref[:, 2]).double().log().mean()) < 0.02
    # offsets are uniform over the free room
    for offset, room in ((top, size - h), (left, size - w)):
        free = room > 0
        assert abs((offset[free].double() / room[free]).mean() - 0.5) < 0.03


def test_crop_boxes_fall_back_to_the_central_crop():
    # a 3:1 to 4:1 aspect ratio never fits 90% of a square image: torchvision's fallback
    boxes = A.sample_crop_boxes(16, 30, 30, (0.9, 1.0), (3.0, 4.0), gen())
    assert boxes.tolist() == [[10, 0, 10, 30]] * 16  # h = round(30 / 3), top = (30 - 10) // 2


def test_sample_jitter_ranges():
    b, c, s, h = A.sample_jitter(4096, (0.8, 1.5, 0.2, 0.1), gen())
    assert 0.2 <= b.min() and b.max() <= 1.8 and abs(b.mean() - 1.0) < 0.03
    assert 0.0 <= c.min() and c.max() <= 2.5 and abs(c.mean() - 1.25) < 0.04
    assert 0.8 <= s.min() and s.max() <= 1.2
    assert -0.1 <= h.min() and h.max() <= 0.1 and abs(h.mean()) < 0.01
    assert A.sample_jitter(8, (0.4, 0.0, 0.0, 0.0), gen())[1:] == (None, None, None)


def rate_case(name: str, batch: int) -> tuple[ViewSpec, torch.Tensor]:
    """A spec applying only one op with p = 0.3, and images on which that op always changes something."""
    x = torch.zeros(batch, 3, 4, 4)
    if name == "flip":
        x[..., 2:] = 1.0
    elif name == "jitter":
        x += 0.5
    elif name == "gray":
        x += torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    elif name == "blur":
        x[..., ::2, ::2] = 1.0
    else:
        x += 0.7
    fields = {"flip": {"flip_p": 0.3}, "jitter": {"jitter_p": 0.3, "jitter": (0.5, 0.0, 0.0, 0.0)},
              "gray": {"gray_p": 0.3}, "blur": {"blur_p": 0.3, "blur_sigma": (1.0, 2.0)}, "solarize": {"solarize_p": 0.3}}
    return IDENTITY.model_copy(update=fields[name]), x


@pytest.mark.parametrize("name", ["flip", "jitter", "gray", "blur", "solarize"])
def test_application_rate_is_p(name):
    batch, p = 8192, 0.3
    spec, x = rate_case(name, batch)
    out = make_view(x, spec, 4, gen())
    rate = (out != x).flatten(1).any(dim=1).double().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / batch)


def test_identity_spec_returns_the_input_exactly():
    x = torch.rand(5, 3, 8, 8, generator=gen())
    assert torch.equal(make_view(x, IDENTITY, 8, gen()), x)
    images = (x * 255).to(torch.uint8)
    views = ViewMaker([IDENTITY], MEAN, STD, 8, clean=True)(images, torch.zeros(5), torch.arange(5), gen())
    assert torch.equal(views.crops[0], views.clean)


def test_every_sample_gets_its_own_randomness():
    x = torch.rand(1, 3, 16, 16, generator=gen()).expand(64, -1, -1, -1).contiguous()
    spec = RECIPES["simclr"][0]
    a, b = make_view(x, spec, 16, gen()), make_view(x, spec, 16, gen(1))
    assert len({tuple(v.flatten().tolist()) for v in a}) == 64
    assert not torch.allclose(a, b)
    assert not x.equal(a) and torch.equal(x[0], x[63])  # the input is untouched


def test_same_seed_gives_identical_views():
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=gen())
    maker = ViewMaker(build_recipe("byol"), MEAN, STD, 12, clean=False)
    labels, index = torch.zeros(16, dtype=torch.long), torch.arange(16)
    first = maker(images, labels, index, gen(7)).crops
    again = maker(images, labels, index, gen(7)).crops
    other = maker(images, labels, index, gen(8)).crops
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_one_channel_batch():
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=gen())
    views = ViewMaker(build_recipe("simclr"), (0.13,), (0.31,), 28, clean=True)(images, torch.zeros(8), torch.arange(8), gen())
    assert [tuple(v.shape) for v in views.crops] == [(8, 1, 28, 28)] * 2
    assert all(torch.isfinite(v).all() for v in views.crops)
    torch.testing.assert_close(views.clean, (images / 255 - 0.13) / 0.31)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_view_maker_makes_every_recipe(recipe):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen())
    labels, index = torch.tensor([0, 1, -1, 2]), torch.tensor([5, 6, 7, 8])
    views = ViewMaker(build_recipe(recipe), MEAN, STD, 32, clean=recipe == "cifar")(images, labels, index, gen())
    expected = {"simclr": [32] * 2, "byol": [32] * 2, "cifar": [32] * 2, "simsiam_cifar": [32] * 2,
                "multicrop": [32] * 2 + [14] * 6, "supervised": [32], "mae": [32], "dino": [32] * 2 + [14] * 8,
                "vicreg": [32] * 2}[recipe]
    assert [v.shape[-1] for v in views.crops] == expected
    assert all(v.shape[:2] == (4, 3) and v.dtype == torch.float32 for v in views.crops)
    assert views.labels is labels and views.index is index
    if recipe == "cifar":
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        torch.testing.assert_close(views.clean, (images.double() / 255 - mean.double()).div(std.double()).float())
    else:
        assert views.clean is None


def test_recipes_hold_their_papers_settings():
    simclr, byol, cifar = RECIPES["simclr"], RECIPES["byol"], RECIPES["cifar"]
    assert simclr[0].jitter == (0.8, 0.8, 0.8, 0.2) and simclr[0].blur_p == 0.5 and simclr[0].gray_p == 0.2
    assert [v.blur_p for v in byol] == [1.0, 0.1] and [v.solarize_p for v in byol] == [0.0, 0.2]
    assert [v.blur_p for v in cifar] == [0.0, 0.0] and [v.solarize_p for v in cifar] == [0.0, 0.2]
    assert RECIPES["simsiam_cifar"][0].scale == (0.2, 1.0) and RECIPES["simsiam_cifar"][0].jitter == (0.4, 0.4, 0.4, 0.1)
    local = RECIPES["multicrop"][2]
    assert local.scale == (0.05, 0.14) and local.crop_size(224) == 96 and RECIPES["multicrop"][0].crop_size(224) == 224
    sup = RECIPES["supervised"]
    assert len(sup) == 1 and (sup[0].jitter_p, sup[0].gray_p, sup[0].blur_p, sup[0].flip_p) == (0.0, 0.0, 0.0, 0.5)
    (mae,) = RECIPES["mae"]
    assert (mae.scale, mae.jitter_p, mae.gray_p, mae.blur_p, mae.flip_p) == ((0.2, 1.0), 0.0, 0.0, 0.0, 0.5)
    dino = RECIPES["dino"]
    assert [v.blur_p for v in dino] == [1.0, 0.1] + [0.5] * 8 and [v.solarize_p for v in dino[:3]] == [0.0, 0.2, 0.0]
    assert [v.scale for v in dino[1:3]] == [(0.4, 1.0), (0.05, 0.4)] and dino[2].crop_size(224) == 96
    assert [(v.blur_p, v.solarize_p) for v in RECIPES["vicreg"]] == [(0.5, 0.1)] * 2


def test_default_blur_kernel_is_about_ten_percent_odd():
    spec = ViewSpec()
    assert [spec.kernel_size(s) for s in (14, 32, 96, 224)] == [3, 3, 9, 23]
    assert ViewSpec(blur_kernel=5).kernel_size(224) == 5


def test_build_recipe_from_dicts_and_errors():
    specs = build_recipe([{"size": 24, "blur_p": 1.0}, {}])
    assert specs[0].size == 24 and specs[0].blur_p == 1.0 and specs[1] == ViewSpec()
    with pytest.raises(ConfigError, match="unknown view recipe 'simclrr'"):
        build_recipe("simclrr")
    with pytest.raises(ConfigError, match=r"augment\[1\]\.flip: "):
        build_recipe([{}, {"flip": 0.5}])
    with pytest.raises(ConfigError, match=r"augment\[0\]\.blur_kernel: .*odd"):
        build_recipe([{"blur_kernel": 4}])
    with pytest.raises(ConfigError, match="either size"):
        build_recipe([{"size": 32, "size_fraction": 0.5}])
    with pytest.raises(ConfigError, match="global"):
        ViewMaker([ViewSpec(size=8), ViewSpec(size=16)], MEAN, STD, 16, clean=False)


def test_torchvision_pipeline_shape_and_normalisation():
    array = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    out = torchvision_pipeline(IDENTITY, MEAN, STD, 32)(image)
    expected = (torch.from_numpy(array).permute(2, 0, 1) / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(out, expected)
    shapes = [tuple(torchvision_pipeline(spec, MEAN, STD, 32)(image).shape) for spec in RECIPES["multicrop"]]
    assert shapes == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 6
