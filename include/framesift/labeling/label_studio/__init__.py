"""Label Studio over its REST API (``requests`` only, no SDK in Airflow's environment):
``client`` (HTTP, auth, retries), ``tasks`` (the labeling config and coordinates),
``backend`` (the labeling protocol: projects, image sequences, status, annotations)."""
