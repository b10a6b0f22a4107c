"""resize = "thumbnail512" reproduces fedi-safety's preprocessing bit for bit, on files opened from disk.

The upstream path, as read at these commits:
- db0/fedi-safety 4ec5574201f433eb6e73b41da3a84bc392734e0c: fedi_safety/check.py check_image(image) calls
  image.thumbnail((512, 512)) on the picture as local_storage.load_image, object_storage.download_image,
  remote_storage.download_image and pictrs_safety left it (Image.open(BytesIO(bytes)), not loaded: a JPEG is
  drafted), then hands it to horde-safety; requirements.txt pins pillow~=9.3.0, clip-interrogator==0.6.0.
- Haidra-Org/horde-safety ebea47ad14792ee1130d79a905428e3fb818c0ee: interrogate.py get_interrogator_no_blip()
  is Interrogator(Config(clip_model_name="ViT-L-14/openai")); csam_checker.py check_for_csam and
  nsfw_checker_class.py check_for_nsfw pass the picture unchanged to interrogator.image_to_features.
- pharmapsychotic/clip-interrogator v0.6.0 (ce9d271aa10316bb3bff2d2707841876205f34ac):
  clip_interrogator.py clip_preprocess = open_clip.create_model_and_transforms("ViT-L-14", pretrained="openai")'s
  preprocess, image_to_features = clip_preprocess(image).unsqueeze(0): Resize(224, bicubic) on the shortest
  side, CenterCrop(224), convert to RGB, ToTensor, Normalize (OpenAI mean/std).
- python-pillow/Pillow 9.3.0 (d594f4cb8dc47fb0c69ae58d9fff86faae4515bd): src/PIL/Image.py Image.thumbnail asks
  the JPEG draft for twice the thumbnail's size; from 10.4.0 (cc83cc8ec866ac0308fc8fc16ff16893540f77e2) for
  twice the requested box, a smaller reduction for pictures that are not square. The mode follows 9.3.

Checked once outside this suite against Pillow 9.3.0 itself (74 generated JPEG, progressive, greyscale and PNG
files of 300-4200 px, run through 9.3's thumbnail and open_clip's Resize/CenterCrop): 68 identical to the
mode's rows, 6 tall ones within 2 levels of 255 (Pillow's bicubic arithmetic moved by 1 level between 9.3 and
13 on them); Pillow 13's own thumbnail gave other pixels on 26 of the 74 (up to 8 levels).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

open_clip = pytest.importorskip("open_clip")

from mirror_scan.model.bundle import Preprocess  # noqa: E402
from mirror_scan.model.preprocess import draft_scale, thumbnail  # noqa: E402
from mirror_scan.model.scoring import result_model_id  # noqa: E402
from mirror_scan.model.synthetic import generated_image  # noqa: E402
from mirror_scan.scan.decoders.decode import Limits, decode  # noqa: E402
from mirror_scan.settings import SPECS  # noqa: E402

THUMBNAIL = Limits(resize="thumbnail512")
SIZES = [(2400, 1600), (1600, 2400), (2400, 2400), (900, 1200), (1200, 900), (2048, 1536), (3000, 700), (700, 3000),
         (2318, 1838), (1366, 768), (1025, 1025), (600, 450), (511, 300), (513, 100), (512, 512)]  # fmt: skip


@pytest.fixture(scope="module")
def vit_l_14_openai():
    """clip-interrogator's clip_preprocess, built as create_model_and_transforms builds it (without the model's
    weights): the model's image size and the pretrained tag's preprocessing."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    size = open_clip.get_model_config("ViT-L-14")["vision_cfg"]["image_size"]
    cfg = merge_preprocess_dict(PreprocessCfg(size=size), open_clip.get_pretrained_cfg("ViT-L-14", "openai"))
    prep = Preprocess(size=(size, size), mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"],
                      resize_mode=cfg["resize_mode"])  # fmt: skip
    return prep, image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def _pillow93_thumbnail(img: Image.Image, size=(512, 512), resample=Image.Resampling.BICUBIC, reducing_gap=2.0):
    """Pillow 9.3.0's Image.thumbnail body (src/PIL/Image.py at d594f4cb), returning the picture it would
    leave in place of img."""
    provided_size = tuple(map(math.floor, size))

    def preserve_aspect_ratio():
        def round_aspect(number, key):
            return max(min(math.floor(number), math.ceil(number), key=key), 1)

        x, y = provided_size
        if x >= img.width and y >= img.height:
            return None
        aspect = img.width / img.height
        if x / y >= aspect:
            x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
        else:
            y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
        return x, y

    box = None
    if reducing_gap is not None:
        size = preserve_aspect_ratio()
        if size is None:
            return img
        res = img.draft(None, (size[0] * reducing_gap, size[1] * reducing_gap))
        if res is not None:
            box = res[1]
    if box is None:
        img.load()
        size = preserve_aspect_ratio()
        if size is None:
            return img
    if img.size != size:
        return img.resize(size, resample, box=box, reducing_gap=reducing_gap)
    return img


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Generated pictures written to disk: baseline, progressive and greyscale JPEGs, and PNGs."""
    root = tmp_path_factory.mktemp("pictures")
    paths = []
    for seed, (w, h) in enumerate(SIZES):
        img = generated_image(seed, w, h)
        kinds = [("jpg", img, {"quality": 85})]
        if seed % 3 == 0:
            kinds += [("prog.jpg", img, {"quality": 80, "progressive": True}), ("grey.jpg", img.convert("L"), {})]
        if seed % 2 == 0:
            kinds.append(("png", img, {}))
        for suffix, picture, options in kinds:
            path = root / f"{seed:02d}-{w}x{h}.{suffix}"
            picture.save(path, **options)
            paths.append(path)
    return paths


def _rows(path: Path, prep: Preprocess, limits: Limits = THUMBNAIL) -> np.ndarray:
    decoded = decode(path.read_bytes(), prep, limits)
    assert not isinstance(decoded, str), decoded
    return decoded.pixels


def test_the_thumbnail_is_pillow_93s_and_pillows_own_where_they_agree(files):
    same_draft = other_draft = drafted = 0
    for path in files:
        ours = thumbnail(Image.open(path))
        theirs = _pillow93_thumbnail(Image.open(path))
        assert ours.size == theirs.size and ours.mode == theirs.mode, path.name
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=path.name)
        own = Image.open(path)
        own.thumbnail((512, 512))  # the installed Pillow's own, draft and all
        used = own.decoderconfig[0] if getattr(own, "decoderconfig", None) else 1
        if used == draft_scale(*Image.open(path).size):
            same_draft += 1
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(own), err_msg=path.name)
        else:
            other_draft += 1  # Pillow >= 10.4 drafts less on pictures that are not square
        if path.suffix == ".jpg" and draft_scale(*Image.open(path).size) > 1:
            drafted += 1
            whole = Image.open(path)
            whole.load()  # drafting only works before load(): this one is the whole decode's thumbnail
            assert not np.array_equal(np.asarray(thumbnail(whole)), np.asarray(ours)), path.name
    assert same_draft >= 10 and drafted >= 5, (same_draft, other_draft, drafted)


def test_the_rows_are_fedi_safetys_bit_for_bit(files, vit_l_14_openai):
    prep, clip_preprocess = vit_l_14_openai
    for path in files:
        expected = clip_preprocess(_pillow93_thumbnail(Image.open(path))).numpy()
        rows = _rows(path, prep)
        assert rows.shape == (1, 3, 224, 224), path.name
        np.testing.assert_array_equal(rows[0], expected, err_msg=path.name)
        if path.suffix == ".png":  # no draft: Pillow's own thumbnail, whatever its version
            own = Image.open(path)
            own.thumbnail((512, 512))
            np.testing.assert_array_equal(rows[0], clip_preprocess(own).numpy(), err_msg=path.name)


def test_exif_rotation_is_applied_to_the_thumbnail(tmp_path, vit_l_14_openai):
    # fedi-safety ignores the tag; the mode turns its thumbnail as a viewer turns the picture (as every mode does).
    prep, clip_preprocess = vit_l_14_openai
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    generated_image(3, 2400, 1500).save(path, quality=85, exif=exif)
    small = _pillow93_thumbnail(Image.open(path))
    expected = clip_preprocess(small.transpose(Image.Transpose.ROTATE_270)).numpy()
    np.testing.assert_array_equal(_rows(path, prep)[0], expected)
    assert ImageOps.exif_transpose(Image.open(path)).size == (1500, 2400)


def test_hashes_see_the_whole_picture_and_the_draft_is_counted(tmp_path, vit_l_14_openai):
    prep, _ = vit_l_14_openai
    path = tmp_path / "big.jpg"
    generated_image(5, 2400, 2000).save(path, quality=85)
    data = path.read_bytes()
    exact, small = decode(data, prep), decode(data, prep, THUMBNAIL)
    assert not isinstance(exact, str) and not isinstance(small, str)
    assert small.pdq == exact.pdq and small.pdq_variants == exact.pdq_variants  # PDQ of the whole decode
    assert "thumbnail" in small.cpu_s and "thumbnail" not in exact.cpu_s
    assert not np.array_equal(small.pixels, exact.pixels)


def test_full_coverage_tiles_come_from_the_whole_picture(tmp_path, vit_l_14_openai):
    prep, clip_preprocess = vit_l_14_openai
    path = tmp_path / "wide.jpg"
    generated_image(6, 3200, 700).save(path, quality=85)
    full = Limits(coverage="full", resize="thumbnail512")
    rows, exact_rows = _rows(path, prep, full), _rows(path, prep, Limits(coverage="full"))
    assert len(rows) == len(exact_rows) == 1 + math.ceil(3200 / 700)
    np.testing.assert_array_equal(rows[0], clip_preprocess(_pillow93_thumbnail(Image.open(path))).numpy())
    whole = Image.open(path).convert("RGB")
    first_tile = thumbnail(whole.crop((0, 0, 700, 700)))  # each tile is thumbnailed as a picture of its own
    np.testing.assert_array_equal(rows[1], clip_preprocess(first_tile).numpy())


def test_animation_frames_are_each_thumbnailed(tmp_path, vit_l_14_openai):
    prep, clip_preprocess = vit_l_14_openai
    frames = [generated_image(i, 1100, 800) for i in range(3)]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:])  # APNG: lossless, so frames are known
    rows = _rows(path, prep)
    assert len(rows) == 3
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(rows[i], clip_preprocess(thumbnail(frame)).numpy(), err_msg=str(i))


def test_the_mode_is_a_setting_and_its_results_are_keyed_apart():
    assert SPECS["resize"].parse("thumbnail512") == "thumbnail512"
    with pytest.raises(ValueError):
        SPECS["resize"].parse("thumbnail")
    bundle, scorer = SimpleNamespace(model_id="m"), SimpleNamespace(placement=SimpleNamespace(precision="fp32"))
    keys = {mode: result_model_id(bundle, scorer, Limits(resize=mode)) for mode in ("exact", "reduced", "thumbnail512")}
    assert keys == {"exact": "m:fp32", "reduced": "m:fp32:reduced", "thumbnail512": "m:fp32:thumbnail512"}
