"""The decoders: bytes from strangers to the pixels a viewer would show (every frame, every picture of a
file, what arrived of a cut one), PDQ hashes of the picture as stored, and the model's views; in worker
processes with a deadline. They know nothing of the pipeline that calls them (scan/), which is the floor
above."""
