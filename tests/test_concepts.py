"""`model concepts`: new prompts embedded with the bundle's own text encoder, without torch."""

from __future__ import annotations

import json

import numpy as np

from mirror_scan.model.bundle import load_bundle

from .conftest import run_cli


def test_concepts_for_a_new_policy_without_torch(tiny_bundle, write_policy):
    before = load_bundle(tiny_bundle)
    policy = write_policy({"signs": {"a stop sign": 0.3, "a lighthouse": 0.3, "child": 0.2}}, {"signs": 1})
    # A guard module makes any `import torch` fail, so the command proves it never needs torch.
    guard = tiny_bundle.parent / "guard"
    guard.mkdir()
    (guard / "torch.py").write_text("raise ImportError('torch must not be imported by model concepts')\n")
    proc = run_cli(
        "model", "concepts", "--model", str(tiny_bundle), "--policy", str(policy), env={"PYTHONPATH": str(guard)}
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 new prompt(s)" in proc.stdout
    after = load_bundle(tiny_bundle)  # hashes verified
    assert after.concepts.prompts[: len(before.concepts.prompts)] == before.concepts.prompts
    assert after.concepts.prompts[-2:] == ("a stop sign", "a lighthouse")
    np.testing.assert_array_equal(after.concepts.matrix[: len(before.concepts.prompts)], before.concepts.matrix)
    # Old concept files are gone; only the manifest's files remain.
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert sorted(p.name for p in tiny_bundle.glob("concepts-*")) == sorted(
        [manifest["files"]["concepts"], manifest["files"]["concept_prompts"]]
    )


def test_onnx_text_encoder_reproduces_export_time_torch_concepts(tiny_bundle):
    from mirror_scan.model.infer import TextEncoder

    bundle = load_bundle(tiny_bundle)
    prompts = list(bundle.concepts.prompts[:40])
    recomputed = TextEncoder(bundle)(prompts)
    cos = (recomputed * bundle.concepts.select(tuple(prompts))).sum(axis=1)
    assert cos.min() > 0.9999


def test_scoring_needs_every_policy_prompt(tiny_bundle, write_policy):
    import pytest

    from mirror_scan.errors import BundleError
    from mirror_scan.model.scoring import require_prompts
    from mirror_scan.policy import load_policy

    policy = load_policy(str(write_policy({"g": {"a never embedded prompt": 0.1}}, {"g": 1})))
    with pytest.raises(BundleError, match="model concepts"):
        require_prompts(load_bundle(tiny_bundle), policy)
    # The scan command refuses before reading any file, with the same advice.
    proc = run_cli(
        "scan",
        str(tiny_bundle),
        "--model",
        str(tiny_bundle),
        "--policy",
        str(policy.source),
        "--state",
        str(tiny_bundle.parent / "s.db"),
        "--dry-run",
    )
    assert proc.returncode == 2 and "model concepts" in proc.stderr and "Traceback" not in proc.stderr
