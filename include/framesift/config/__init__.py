"""The pipeline configuration: ``schema`` (the validated model of the YAML file, one
section per stage) and ``loading`` (reading the YAML, the book-style flat keys, errors
that name the file and the key).
"""

from __future__ import annotations
