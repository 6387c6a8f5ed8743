"""Inference: the detector over a video's frames, one forward pass for boxes, class
probabilities and an embedding per frame.

- ``models``: model URIs (local, ``s3://``, ``package://``) to local files (S3 download
  cached by ETag), the bundled default (YOLOv3-tiny, COCO-80) and the fall model
- ``darknet``: Darknet YOLO cfg + weights as a torch module (the default detector)
- ``networks``: a checkpoint (ultralytics ``.pt`` or Darknet) as one module with two
  outputs (raw detections, embedding) from one pass
- ``runtimes``: the device (CPU / CUDA), fp16, out-of-memory handling
- ``backends``: ``inference.runtime``: torch / ONNX Runtime / OpenVINO, exports cached by
  content hash, ``auto`` (the fastest measured)
- ``detector``: letterbox, the network on its runtime, own NMS, per-frame predictions
- ``embedders``: other embedding models (EfficientNet-Lite0, SimCLR fine-tuning)
- ``streaming``: frames from S3 through a bounded prefetch queue into batches, results out
- ``predictions``: Lightly's prediction files and the embeddings files
- ``stage``: the ingest run's inference stage (claim, infer, record)
"""

from __future__ import annotations
