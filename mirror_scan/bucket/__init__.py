"""Scanning a bucket in place (`bucket scan`): list -> manifest shards -> fetch -> decode -> infer ->
results -> one ingest into the ledger, on one machine (`--engine local`) or on a Ray cluster
(`--engine ray`), with the same stage code. See docs/scaling.md."""
