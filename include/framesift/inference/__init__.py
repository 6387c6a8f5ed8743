"""Inference: the detector over a video's frames, one forward pass for boxes, class
probabilities and an embedding per frame.

- ``models``: model URIs to local checkpoints (S3 download cached by ETag), the demo default
- ``runtimes``: the device (CPU / CUDA), fp16, out-of-memory handling
- ``detector``: the ultralytics detection checkpoint, letterbox, own NMS, embeddings hook
- ``embedders``: other embedding models (EfficientNet-Lite0, SimCLR fine-tuning)
- ``streaming``: frames from S3 through a bounded prefetch queue into batches, results out
- ``predictions``: Lightly's prediction files and the embeddings files
- ``stage``: the ingest run's inference stage (claim, infer, record)
"""

from __future__ import annotations
