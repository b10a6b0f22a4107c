"""Hash lists: PDQ and the matcher, and the list file formats other tools write."""
