"""Labeling platforms behind one protocol, and the push of image sequences to them.

- ``base``: the protocol (:class:`~framesift.labeling.base.LabelingBackend`) and the plain
  data that crosses it (requests, pushed sequences, statuses, annotations, typed errors)
- ``factory``: the backend named by ``labeling.backend`` (``get_backend``)
- ``label_studio/`` and ``encord``: one backend each (``encord_jobs``: Encord's upload job)
- ``queue``: the ``labeling_queue`` record of every pushed sequence, the exactly-once push
- ``creations``: create-once records, one per platform object a push creates
- ``push``: the ingest run's push stage (one image sequence per video)
"""
