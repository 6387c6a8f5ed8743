"""Operators, one module per stage of the flow (the DAG files wire them): thin glue that
gets clients from :class:`~framesift_airflow.hooks.FramesiftHook`, builds plain inputs
and calls the core (``framesift.<stage>``). The core is imported inside ``execute``, so
DAG parsing loads neither it nor its heavy dependencies (torch, PyAV, matplotlib).
"""

from __future__ import annotations
