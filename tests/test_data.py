"""Tests of the data layer: image reading, dataset layouts, crops and the DataModule."""

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import RandomSampler

from datamodules import (
    SOURCES,
    DatasetNotFoundError,
    EvalImages,
    ImageDataModule,
    ImageLoadError,
    TrainCrops,
    list_items,
    load_rgb,
)
from datamodules.datasets import SkippedImageWarning, collate_single
from datamodules.io import ImageConversionWarning
from datamodules.sources import Item, check_exists
from datamodules.transforms import eval_preprocess, train_crop

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def save(path: Path, size: tuple[int, int] = (32, 24), value: int = 128) -> Path:
    """Write a solid RGB image of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def truncated(path: Path) -> Path:
    """Write the first half of a noisy PNG."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- io ---------------------------------------------------------------------------------------


def test_load_rgb_grayscale(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 77).save(tmp_path / "gray.png")
    with pytest.warns(ImageConversionWarning, match=r"gray\.png.*grayscale"):
        image = load_rgb(tmp_path / "gray.png")
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    assert (image == 77).all()


def test_load_rgb_palette(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    with pytest.warns(ImageConversionWarning, match=r"palette\.png.*palette"):
        image = load_rgb(tmp_path / "palette.png")
    assert image[0, 0].tolist() == [200, 10, 30]


def test_load_rgb_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[0, 1] = (10, 20, 30, 255)  # opaque -> unchanged
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black -> mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with pytest.warns(ImageConversionWarning, match=r"alpha\.png.*RGBA"):
        image = load_rgb(tmp_path / "alpha.png")
    assert image[0, 0].tolist() == [255, 255, 255]
    assert image[0, 1].tolist() == [10, 20, 30]
    assert 120 <= image[1, 0, 0] <= 135


def test_load_rgb_16_bit(tmp_path: Path) -> None:
    values = np.array([[65535, 257 * 100, 65280], [0, 128, 257 * 100 + 129]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode == "I;16"
    with pytest.warns(ImageConversionWarning, match=r"deep\.png.*16-bit"):
        image = load_rgb(tmp_path / "deep.png")
    assert image.dtype == np.uint8
    assert image[..., 0].tolist() == [[255, 100, 254], [0, 0, 101]]  # round(value / 257)
    assert (image[..., 0] == image[..., 2]).all()


def test_load_rgb_plain_rgb_silent_and_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise for display
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "rotated.png", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_rgb(tmp_path / "rotated.png")
    assert image.shape == (30, 20, 3)
    assert image[0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "missing"])
def test_load_rgb_unreadable(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.png"
    if kind == "truncated":
        truncated(path)
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "empty":
        path.touch()
    with pytest.raises(ImageLoadError, match=f"{kind}\\.png"):
        load_rgb(path)


# --- transforms -------------------------------------------------------------------------------


def test_eval_preprocess_protocol() -> None:
    image = torch.randint(0, 256, (3, 1000, 1200), dtype=torch.uint8)
    out = eval_preprocess(image, resize_short_side=768, center_crop=768)
    assert out.shape == (3, 768, 768) and out.dtype == torch.uint8
    resized = eval_preprocess(image, resize_short_side=768)
    assert resized.shape == (3, 768, 921)
    assert torch.equal(out, resized[:, :, 76:844])
    assert eval_preprocess(image, center_crop=500).shape == (3, 500, 500)
    assert eval_preprocess(image) is image
    with pytest.raises(ValueError, match="smaller than the crop"):
        eval_preprocess(image, resize_short_side=256, center_crop=300)


def test_bicubic_resize_clamps_and_antialiases() -> None:
    step = torch.zeros(3, 64, 64, dtype=torch.uint8)
    step[:, :, 32:] = 255
    out = eval_preprocess(step, resize_short_side=40).to(torch.int16)
    assert (out.diff(dim=-1) >= 0).all()  # overshoot wrapped around 255 would break this
    assert out[..., -1].min() == 255 and out[..., 0].max() == 0
    grid = torch.arange(320)
    checkerboard = ((grid[:, None] + grid[None]) % 2 * 255).to(torch.uint8).expand(3, -1, -1)
    small = eval_preprocess(checkerboard.contiguous(), resize_short_side=64).float()
    assert small.std() < 2  # point sampling (no antialiasing) would give a 0/255 checkerboard


def test_train_crop_shapes_and_range() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    sides = set()
    for _ in range(20):
        crop = train_crop(image, 32, resize_short_side=(40, 60), hflip=True)
        assert crop.shape == (3, 32, 32) and crop.dtype == torch.uint8
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        sides.add(train_crop(image, 32, None, hflip=False, generator=generator).sum().item())
    assert len(sides) > 1  # the crop position is random
    with pytest.raises(ValueError, match="smaller than the crop"):
        train_crop(image, 64)


def test_train_crop_flips_only_when_asked() -> None:
    torch.manual_seed(0)
    ramp = torch.arange(32, dtype=torch.uint8).expand(3, 32, 32).contiguous()
    flipped = [train_crop(ramp, 32, hflip=True)[0, 0, 0].item() == 31 for _ in range(40)]
    assert 0 < sum(flipped) < 40
    assert all(torch.equal(train_crop(ramp, 32, hflip=False), ramp) for _ in range(10))


# --- sources ----------------------------------------------------------------------------------


def test_lsdir_layout(tmp_path: Path) -> None:
    root = tmp_path / "LSDIR"
    for folder, index in [("0001000", 1), ("0001000", 2), ("0002000", 1001)]:
        save(root / "HR" / "train" / folder / f"{index:07d}.png")
    save(root / "HR" / "val" / "0000001.png")
    (root / "HR" / "train" / "0001000" / "notes.txt").write_text("x")
    items = list_items({"source": "lsdir", "root": str(root), "split": "train"})
    assert [item.name for item in items] == [
        "0001000/0000001",
        "0001000/0000002",
        "0002000/0001001",
    ]
    assert items[0].frames == (root / "HR" / "train" / "0001000" / "0000001.png",)
    val = list_items({"source": "lsdir", "root": root, "split": "val"})
    assert [item.name for item in val] == ["0000001"]
    limited = list_items({"source": "lsdir", "root": root, "split": "train", "limit": 2})
    assert limited == items[:2]
    with pytest.raises(ValueError, match="splits"):
        list_items({"source": "lsdir", "root": root, "split": "test"})


def make_vimeo(root: Path, clips: list[str], size: tuple[int, int] = (16, 12)) -> None:
    for clip in clips:
        for frame in range(1, 8):
            save(root / "sequences" / clip / f"im{frame}.png", size, value=frame * 30)
    (root / "sep_trainlist.txt").write_text("\n".join(clips[1:]) + "\n\n")
    (root / "sep_testlist.txt").write_text(clips[0] + "\n")


def test_vimeo_layout_and_random_frames(tmp_path: Path) -> None:
    root = tmp_path / "vimeo_septuplet"
    make_vimeo(root, ["00001/0001", "00002/0005", "00001/0002"])
    items = list_items({"source": "vimeo90k", "root": root, "split": "train"})
    assert [item.name for item in items] == ["00001/0002", "00002/0005"]
    assert items[0].frames == tuple(
        root / "sequences" / "00001" / "0002" / f"im{i}.png" for i in range(1, 8)
    )
    test = list_items({"source": "vimeo90k", "root": root, "split": "test"})
    assert [item.name for item in test] == ["00001/0001"]
    torch.manual_seed(0)
    dataset = TrainCrops(items, crop_size=8, hflip=False)
    seen = {round(dataset[0][0, 0, 0].item() * 255) for _ in range(100)}
    assert seen == {30 * frame for frame in range(1, 8)}


def test_div2k_layout(tmp_path: Path) -> None:
    root = tmp_path / "DIV2K"
    for index in (2, 1):
        save(root / "DIV2K_train_HR" / f"{index:04d}.png")
    save(root / "DIV2K_valid_HR" / "0801.png")
    save(root / "DIV2K_train_HR" / "nested" / "0003.png")  # not part of the official layout
    train = list_items({"source": "div2k", "root": root, "split": "train"})
    assert [item.name for item in train] == ["0001", "0002"]
    for split in ("val", "test"):
        assert [i.name for i in list_items({"source": "div2k", "root": root, "split": split})] == [
            "0801"
        ]


def test_folder_source(tmp_path: Path) -> None:
    root = tmp_path / "kodak"
    save(root / "kodim02.PNG")
    save(root / "kodim01.png")
    save(root / "sub" / "photo.JPeG")
    save(root / "._kodim01.png")  # macOS resource fork
    (root / "readme.txt").write_text("x")
    items = list_items({"source": "folder", "root": root, "split": "train"})
    assert [item.name for item in items] == ["kodim01", "kodim02", "sub/photo"]


def test_sample_source() -> None:
    items = list_items({"source": "sample"})
    assert [item.name for item in items] == [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "motorcycle",
        "retina",
    ]
    assert all(item.frames[0].is_file() for item in items)
    assert [item.name for item in list_items({"source": "sample", "limit": 2})] == [
        "astronaut",
        "coffee",
    ]
    assert set(SOURCES) == {"lsdir", "vimeo90k", "div2k", "folder", "sample"}


@pytest.mark.parametrize(
    ("spec", "missing", "homepage"),
    [
        ({"source": "lsdir", "split": "train"}, "LSDIR/HR/train", "data.vision.ee.ethz.ch/yawli"),
        ({"source": "lsdir", "split": "val"}, "LSDIR/HR/val", "LSDIR"),
        ({"source": "vimeo90k", "split": "train"}, "sep_trainlist.txt", "toflow.csail.mit.edu"),
        ({"source": "vimeo90k", "split": "val"}, "sep_testlist.txt", "Vimeo-90k"),
        ({"source": "div2k", "split": "val"}, "DIV2K/DIV2K_valid_HR", "cvl/DIV2K"),
        ({"source": "folder", "homepage": "Kodak: https://x"}, "kodak", "Kodak: https://x"),
    ],
)
def test_missing_dataset(tmp_path: Path, spec: dict, missing: str, homepage: str) -> None:
    for name in ("LSDIR", "DIV2K"):
        (tmp_path / name).mkdir()
    (tmp_path / "vimeo90k" / "sequences").mkdir(parents=True)
    folder = {"lsdir": "LSDIR", "vimeo90k": "vimeo90k", "div2k": "DIV2K", "folder": "kodak"}
    spec = {**spec, "root": str(tmp_path / folder[spec["source"]])}
    for check in (check_exists, list_items):
        with pytest.raises(DatasetNotFoundError) as error:
            check(spec)
        message = str(error.value)
        assert missing in message and str(tmp_path) in message
        assert homepage in message and "paths.data_root" in message and "expected" in message
    with pytest.raises(DatasetNotFoundError, match=r"paths\.data_root"):
        ImageDataModule(test=spec)


def test_empty_or_rootless_dataset(tmp_path: Path) -> None:
    (tmp_path / "DIV2K" / "DIV2K_train_HR").mkdir(parents=True)
    spec = {"source": "div2k", "root": tmp_path / "DIV2K", "split": "train"}
    check_exists(spec)
    with pytest.raises(DatasetNotFoundError, match=r"no images .*DIV2K_train_HR"):
        list_items(spec)
    with pytest.raises(DatasetNotFoundError, match=r"root: null(.|\n)*paths\.data_root"):
        ImageDataModule(train={"source": "lsdir", "root": None, "split": "train"})
    with pytest.raises(ValueError, match="source"):
        list_items({"source": "imagenet", "root": tmp_path})


# --- datasets ---------------------------------------------------------------------------------


def test_train_crops_skip_bad_files(tmp_path: Path) -> None:
    good = [save(tmp_path / f"good{i}.png", (40, 30), value=50 * i) for i in range(2)]
    broken = truncated(tmp_path / "broken.png")
    text = tmp_path / "text.png"
    text.write_text("hello")
    small = save(tmp_path / "small.png", (10, 30))
    paths = [broken, good[0], small, text, good[1]]
    dataset = TrainCrops([Item(p.stem, (p,)) for p in paths], crop_size=24)
    with pytest.warns(SkippedImageWarning) as record:
        crops = [dataset[i] for _ in range(3) for i in range(len(dataset))]
    for crop in crops:
        assert crop.shape == (3, 24, 24) and crop.dtype == torch.float32
        assert crop.min() >= 0.0 and crop.max() <= 1.0
    assert {round(crop[0, 0, 0].item() * 255) for crop in crops} == {0, 50}
    messages = [str(w.message) for w in record]
    for bad in (broken, small, text):
        assert sum(str(bad) in m for m in messages) == 1  # once per file
    assert any("smaller than the crop" in m for m in messages)

    all_bad = TrainCrops([Item("broken", (broken,)), Item("small", (small,))], crop_size=24)
    with pytest.warns(SkippedImageWarning), pytest.raises(RuntimeError, match="none of the 2"):
        all_bad[0]


def test_train_crops_resize_range(tmp_path: Path) -> None:
    small = save(tmp_path / "small.png", (20, 16))
    dataset = TrainCrops([Item("small", (small,))], crop_size=24, resize_short_side=(24, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dataset[0].shape == (3, 24, 24)
    with pytest.raises(ValueError, match="lo <= hi"):
        TrainCrops([Item("small", (small,))], crop_size=24, resize_short_side=(16, 40))


def test_eval_images_sample_protocol() -> None:
    dataset = EvalImages(list_items({"source": "sample"}), resize_short_side=768, center_crop=768)
    for index in range(len(dataset)):
        entry = dataset[index]
        assert entry is not None
        assert entry["image"].shape == (3, 768, 768) and entry["image"].dtype == torch.uint8
    assert dataset[0]["name"] == "astronaut"


def test_eval_images_skip_unusable(tmp_path: Path) -> None:
    good = save(tmp_path / "good.png", (40, 30))
    broken = truncated(tmp_path / "broken.png")
    small = save(tmp_path / "small.png", (20, 20))
    items = [Item(p.stem, (p,)) for p in (good, broken, small)]
    dataset = EvalImages(items, center_crop=24)
    entry = collate_single([dataset[0]])
    assert entry is not None and entry["name"] == "good" and entry["image"].shape == (3, 24, 24)
    with pytest.warns(SkippedImageWarning, match=r"broken\.png"):
        assert collate_single([dataset[1]]) is None
    with pytest.warns(SkippedImageWarning, match=r"small\.png.*center_crop=24"):
        assert dataset[2] is None
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_single([dataset[0], dataset[0]])


# --- datamodule -------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i in range(6):
        save(root / f"img{i}.png", (48, 40), value=20 * i)
    save(root / "tiny.png", (16, 16))
    return root


def test_datamodule_loaders(image_folder: Path) -> None:
    spec = {"source": "folder", "root": str(image_folder)}
    dm = ImageDataModule(
        train=spec,
        val=spec,
        test={**spec, "name": "mine", "center_crop": 32, "expected_count": 7},
        batch_size=4,
        num_workers=0,
        crop_size=24,
        resize_short_side=[24, 30],
        val_crop_size=32,
    )
    with pytest.warns(SkippedImageWarning, match=r"tiny\.png.*val_crop_size=32"):
        dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RandomSampler) and loader.drop_last
    train = list(loader)
    assert len(train) == 1 and train[0].shape == (4, 3, 24, 24)  # 7 images, drop_last
    val = list(dm.val_dataloader())
    assert [batch.shape[0] for batch in val] == [4, 2]
    assert val[0].shape[1:] == (3, 32, 32) and val[0].dtype == torch.float32
    assert dm.test_name == "mine"
    with pytest.warns(SkippedImageWarning, match=r"tiny\.png"):
        batches = list(dm.test_dataloader())
    assert batches[-1] is None
    assert [b["name"] for b in batches[:-1]] == [f"img{i}" for i in range(6)]
    assert batches[0]["image"].shape == (3, 32, 32)


def test_datamodule_expected_count_and_no_test(image_folder: Path) -> None:
    spec = {"source": "folder", "root": image_folder, "expected_count": 24}
    with pytest.warns(UserWarning, match="has 7 images, expected 24"):
        assert len(ImageDataModule(test=spec).eval_images()) == 7
    assert ImageDataModule(test={"source": "folder", "root": image_folder}).test_name == "folder"
    dm = ImageDataModule(train={"source": "folder", "root": image_folder})
    with pytest.raises(ValueError, match=r"no evaluation images \(test:\); use data=kodak"):
        dm.eval_images()


def test_global_batch_split(image_folder: Path) -> None:
    spec = {"source": "folder", "root": image_folder}
    dm = ImageDataModule(train=spec, batch_size=8, num_workers=0, crop_size=16)
    assert dm.per_device_batch_size == 8
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.per_device_batch_size == 4
    odd = ImageDataModule(train=spec, batch_size=5, num_workers=0, crop_size=16)
    odd.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"batch_size=5 is the global batch.*\(2\)"):
        odd.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_size": 0}, "crop_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"resize_short_side": [200, 300]}, "lo <= hi"),
        ({"resize_short_side": [300, 280]}, "lo <= hi"),
        ({"resize_short_side": [300]}, r"\[lo, hi\]"),
        ({"test": {"source": "sample", "centre_crop": 768}}, "unknown keys"),
        ({"test": {"source": "sample", "center_crop": 0}}, "center_crop"),
        ({"train": {"source": "sample", "limit": "2"}}, "limit"),
    ],
)
def test_datamodule_rejects_bad_numbers(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageDataModule(**kwargs)


# --- configs ----------------------------------------------------------------------------------


def load_config(name: str, data_root: Path) -> OmegaConf:
    config = OmegaConf.create({"paths": {"data_root": str(data_root)}})
    config.data = OmegaConf.load(CONFIGS / f"{name}.yaml")
    return config


def test_sample_config_instantiates(tmp_path: Path) -> None:
    dm = instantiate(load_config("sample", tmp_path).data)
    assert isinstance(dm, ImageDataModule)
    assert dm.test_name == "sample" and dm.per_device_batch_size == 4
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 128, 128)
    assert len(dm.val_set) == 2


@pytest.mark.parametrize(
    "name",
    [
        "lsdir",
        "vimeo90k",
        "div2k",
        "kodak",
        "tecnick",
        "clic2020",
        "clic_pro_valid",
        "div2k_valid",
    ],
)
def test_dataset_configs_fail_fast_without_data(tmp_path: Path, name: str) -> None:
    config = load_config(name, tmp_path)
    assert config.data._target_ == "datamodules.ImageDataModule"
    if config.data.test is not None:
        assert config.data.test.resize_short_side is None and config.data.test.center_crop is None
    with pytest.raises(InstantiationException) as error:
        instantiate(config.data)
    assert isinstance(error.value.__cause__, DatasetNotFoundError)
    assert str(tmp_path) in str(error.value.__cause__)
    assert "paths.data_root" in str(error.value.__cause__)


def test_kodak_config_with_data(tmp_path: Path) -> None:
    for i in range(1, 25):
        save(tmp_path / "kodak" / f"kodim{i:02d}.png", (12, 8))
    dm = instantiate(load_config("kodak", tmp_path).data)
    assert dm.test_name == "kodak"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup("test")
        assert len(dm.eval_images()) == 24
    with pytest.raises(ValueError, match="no training images"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("name", "folder", "size", "side"),
    [
        ("tecnick_768", "tecnick", (1200, 1200), 768),  # RDEIC: short side 768, crop 768²
        ("clic2020_768", "clic2020_test", (1000, 800), 768),
        ("tecnick_512", "tecnick", (600, 600), 512),  # CDC: 600² resized to 512²
        ("div2k_valid_768", "DIV2K/DIV2K_valid_HR", (800, 900), 768),  # CDC: as RDEIC's CLIC
    ],
)
def test_paper_evaluation_presets(tmp_path: Path, name: str, folder: str, size, side) -> None:
    width, height = size
    ramp = np.broadcast_to(np.linspace(0, 255, width).round().astype(np.uint8), (height, width))
    (tmp_path / folder).mkdir(parents=True)
    Image.fromarray(np.ascontiguousarray(ramp)).convert("RGB").save(tmp_path / folder / "a.png")
    dm = instantiate(load_config(name, tmp_path).data)
    assert dm.test_name == name  # its own results folder, apart from the full-size set
    with pytest.warns(UserWarning, match="expected"):  # one image, not the whole set
        (image,) = [item["image"] for item in dm.eval_images()]
    assert image.shape[-2:] == (side, side)
    # resized, then cropped: the crop spans the central side/short-side fraction of the ramp
    kept = min(size) / width
    left, right = float(image[0, :, 0].float().mean()), float(image[0, :, -1].float().mean())
    assert left == pytest.approx(255 * (1 - kept) / 2, abs=3)
    assert right == pytest.approx(255 * (1 + kept) / 2, abs=3)
