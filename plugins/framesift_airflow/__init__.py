"""Airflow glue for framesift: hooks, triggers, operators, the plugin. No pipeline logic lives here."""
