"""Runs as people see them: one ClearML task per run (``clearml``, recorded from a child
process) and the Mongo ``runs`` record that ``framesift status`` reads (``runs``)."""
