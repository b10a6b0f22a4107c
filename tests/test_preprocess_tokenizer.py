"""The torch-free runtime pieces match open_clip exactly: image transform and tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")

from mirror_scan.model.bundle import Preprocess  # noqa: E402
from mirror_scan.model.preprocess import resize_and_crop, to_model_input  # noqa: E402
from mirror_scan.model.synthetic import generated_image  # noqa: E402
from mirror_scan.policy import builtin_policies, load_policy  # noqa: E402

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.mark.parametrize(
    ("size", "mode", "interp"), [(224, "shortest", "bicubic"), (32, "shortest", "bicubic"), (224, "squash", "bilinear")]
)
def test_transform_matches_open_clip_on_generated_images(size, mode, interp):
    prep = Preprocess.from_manifest(
        {
            "image_size": [size, size],
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "interpolation": interp,
            "resize_mode": mode,
        },
        "test",
    )
    reference = open_clip.image_transform(
        (size, size),
        is_train=False,
        mean=tuple(OPENAI_MEAN),
        std=tuple(OPENAI_STD),
        resize_mode=mode,
        interpolation=interp,
    )
    rng = np.random.default_rng(size)
    shapes = [(224, 224), (225, 223), (1, 1), (1, 300), (300, 1), (640, 480), (97, 61)]
    shapes += [tuple(int(v) for v in rng.integers(1, 1200, size=2)) for _ in range(20)]
    for seed, (w, h) in enumerate(shapes):
        img = generated_image(seed, w, h)
        np.testing.assert_array_equal(to_model_input(img, prep), reference(img).numpy(), err_msg=str((w, h)))


def test_extreme_strip_is_bounded_and_close_to_open_clip():
    prep = Preprocess.from_manifest(
        {
            "image_size": [224, 224],
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "test",
    )
    img = generated_image(1, 1, 10000)  # open_clip would build a 224 x 2,240,000 intermediate image
    out = resize_and_crop(img, prep)
    assert out.size == (224, 224)
    small = generated_image(2, 3, 700)
    reference = open_clip.image_transform((224, 224), is_train=False, mean=tuple(OPENAI_MEAN), std=tuple(OPENAI_STD))
    assert np.abs(to_model_input(small, prep) - reference(small).numpy()).max() < 0.1


def test_tokenizer_matches_open_clip_on_every_policy_prompt(tiny_bundle_master):
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.tokenizer import ClipTokenizer

    bundle = load_bundle(tiny_bundle_master)
    ours = ClipTokenizer(bundle.tokenizer_path, 77)
    theirs = open_clip.get_tokenizer("ViT-L-14")
    prompts = [p for name in builtin_policies() for p in load_policy(name).prompts]
    prompts += ["Émoji 🎉 &amp; <b>html</b>", "  spaced   out  ", "it's 3.14!", "x " * 100, ""]
    np.testing.assert_array_equal(ours(prompts), theirs(prompts).numpy())


def test_the_reduced_resize_is_close_to_open_clips_and_stored_apart(tiny_bundle_master):
    # resize = "reduced" (a box reduction by a whole factor first): pixels close to open_clip's transform,
    # the tiny model's embeddings nearly the same, and the results keyed apart (never mixed with exact ones).
    from mirror_scan.model.bundle import load_bundle
    from mirror_scan.model.scoring import Scorer, result_model_id
    from mirror_scan.scan.decoders.decoded import Limits

    bundle = load_bundle(tiny_bundle_master)
    prep = bundle.preprocess
    reference = open_clip.image_transform(prep.size, is_train=False, mean=tuple(prep.mean), std=tuple(prep.std),
                                          resize_mode=prep.resize_mode, interpolation=prep.interpolation)  # fmt: skip
    from mirror_scan.model.preprocess import normalise

    exact, reduced = [], []
    for seed, (w, h) in enumerate([(2318, 1838), (1600, 900), (900, 1600), (700, 500)]):
        img = generated_image(seed, w, h)
        exact.append(reference(img).numpy())
        reduced.append(normalise(resize_and_crop(img, prep, "reduced"), prep))
    exact, reduced = np.stack(exact), np.stack(reduced)
    std = np.asarray(prep.std, np.float32)[None, :, None, None]
    levels = np.abs(exact - reduced) * std * 255  # back in 0-255 levels
    assert levels.mean() < 1.0 and levels.max() < 40, (levels.mean(), levels.max())
    assert np.abs(exact - reduced).max() > 0  # it is another resize: what the key below is for
    scorer = Scorer(bundle, device="cpu", precision="fp32")
    (a, _), (b, _) = scorer(exact), scorer(reduced)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999, cosine
    assert result_model_id(bundle, scorer, Limits(resize="reduced")) != result_model_id(bundle, scorer, Limits())
