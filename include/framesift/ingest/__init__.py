"""Ingest: new uploads to extracted frames.

- ``discovery``: which objects under the videos prefix are new (listing or S3 events)
- ``registry``: the Mongo ``videos`` collection, one record per upload (bucket/key/etag),
  its status machine and the per-stage claims (attempt, token, lease; stranded takeovers)
- ``extract``: frames with PyAV (sampled, deduplicated, corrupt-aware) and their manifest
- ``stage``: the ingest run's stages (register uploads, extract one video)
"""
