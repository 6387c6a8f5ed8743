"""What every stage reads and writes through: S3 (``s3``), the bucket layout and video folders (``layout``),
the model registry's Mongo records (``model_registry``), the stage context
(``context``: clients, config and run id in one value), claims with leases and the
attempt that holds them (``leases``), the chaos test's fault points (``faults``), and the CPUs a stage may use (``machine``)."""
