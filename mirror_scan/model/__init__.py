"""The model: the bundle, preprocessing, the ONNX session, concepts and scoring."""
