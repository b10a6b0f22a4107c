"""The application layer: what the CLI calls. A workspace (settings, ledger, quarantine; opened read-only
or as a writer), the scanner (model, policy, scorer) and the watch daemon. CLI modules parse, call
this layer, and print; they never import each other."""
