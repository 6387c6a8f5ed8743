"""The drift monitor: is production video still like the video the model knows?

- ``signals``: the statistics (uncertainty, embedding MMD, class shift, outliers,
  committee disagreement) over plain arrays, each with its threshold and level
- ``monitor``: the reference and the windows read from the registry and S3; the report
- ``report``: the report as a self-contained HTML page for on-call (tables, plots, frames)
- ``incidents``: incidents in Mongo (one per family and source), the alert outbox
- ``response``: drifted frames selected for labeling, held for an on-call ack (or sent at once)
"""

from __future__ import annotations
