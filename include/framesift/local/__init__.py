"""The embedded local stack (stand-ins for production services, started by the project
itself): S3 and SQS (moto) and MongoDB wire protocol (SecantusDB) in ``stack``, Label
Studio as its own service in ``label_studio``, the demo, and generated videos with ground
truth (``synth``). The pipeline stages never import this package (a contract says so)."""
