"""The scan's stages: read, decode, decide (decide.py: every verdict is made there), record, act,
report; the runner, rescore, and the validator's batcher (uploads.py)."""
