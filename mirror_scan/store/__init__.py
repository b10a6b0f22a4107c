"""What is kept: the ledger, the quarantine and its moves, the upstream removal, and safe file handling."""
