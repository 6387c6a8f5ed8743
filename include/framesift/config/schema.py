"""The pipeline configuration model: one validated section per stage.

Every stage reads its own section; unknown keys and wrong types are errors (see
:mod:`framesift.config.loading` for how a YAML file becomes this model).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConfigError(ValueError):
    """A configuration problem, with the file and key it concerns."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    bucket: str = "framesift"
    videos_prefix: str = "videos/"
    output_bucket: str | None = None
    output_prefix: str = "framesift/"

    @property
    def out_bucket(self) -> str:
        return self.output_bucket or self.bucket


class MongoConfig(_Section):
    database: str = "framesift"


class ConnectionsConfig(_Section):
    """Airflow connection ids; credentials live in the connections, never here."""

    aws: str = "aws_default"
    mongo: str = "mongo_default"
    labeling: str = "framesift_labeling"


class DiscoveryConfig(_Section):
    # list: a deferrable trigger lists the prefix (any S3-compatible store).
    # sqs: an AssetWatcher on an SQS queue fed by S3 event notifications (AWS).
    mode: Literal["list", "sqs"] = "list"
    sqs_queue_url: str | None = None
    poll_interval_s: float = Field(30.0, gt=0)
    video_extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts"]
    )
    max_videos_per_run: int = Field(256, ge=1, le=1024)
    # also run on this cron, to drain what runs left (big batches, interrupted videos); null: uploads only
    drain_cron: str | None = "*/15 * * * *"

    @model_validator(mode="after")
    def _sqs_needs_url(self) -> DiscoveryConfig:
        if self.mode == "sqs" and not (self.sqs_queue_url or os.environ.get("FRAMESIFT_SQS_QUEUE_URL")):
            raise ValueError("mode 'sqs' needs sqs_queue_url (or FRAMESIFT_SQS_QUEUE_URL in the environment)")
        return self


class DedupeConfig(_Section):
    enabled: bool = True
    # mean absolute difference of 32x32 grey thumbnails, in [0, 1]; below it a frame
    # counts as a near-duplicate of the last frame kept
    threshold: float = Field(0.01, ge=0, le=1)


class ExtractionConfig(_Section):
    sampling: Literal["fps", "every_n", "keyframes", "all"] = "fps"
    fps: float = Field(1.0, gt=0)
    every_n: int = Field(30, ge=1)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    image_format: Literal["png", "jpg"] = "png"
    png_compression: int = Field(1, ge=0, le=9)
    jpeg_quality: int = Field(95, ge=1, le=100)
    max_width: int = Field(7680, ge=1)
    max_height: int = Field(4320, ge=1)
    max_duration_s: float = Field(4 * 3600, gt=0)
    max_file_size_mb: float = Field(20_000, gt=0)
    upload_workers: int = Field(8, ge=1, le=64)
    # decode only what sampling keeps where the codec allows (GOP tails, GOPs without a
    # sampled frame, non-reference frames within the tolerance)
    skip_decoding: bool = True
    # a keyframe (or, with skip_decoding, a reference frame) within this fraction of the
    # sampling period may stand in for a sampling time; 0: the exact frame
    keyframe_tolerance: float = Field(0.5, ge=0, le=0.5)
    decode_threading: Literal["slice", "frame", "auto"] = "slice"
    decode_threads: int = Field(1, ge=0, le=64)  # 0: one per CPU; 1: no threading
    # decoders splitting a video's GOPs (each its own container, every n-th GOP) when the
    # decode plan exists (fps/every_n sampling, skip_decoding); 0: one per CPU, up to 4
    decode_workers: int = Field(0, ge=0, le=16)
    # frames decoded from damaged references: exclude (written, kept out of inference and
    # selection), include (treated as clean), drop (not written)
    damaged_frames: Literal["exclude", "include", "drop"] = "exclude"


class SSLConfig(_Section):
    enabled: bool = False
    max_epochs: int = Field(10, ge=1)


class EmbeddingConfig(_Section):
    model: Literal["detector", "efficientnet_lite0"] = "detector"
    ssl: SSLConfig = Field(default_factory=SSLConfig)


class CascadeConfig(_Section):
    """The detector cascade (framesift.inference.cascade): a cheap embedding of every frame
    decides which frames the detector sees. Off by default: on the coverage bench it saved
    31 % of detector frames on generated video at equal coverage, but cost 11-19 % mean
    distance on real clips at their full frame rate, and a generated 720p clip at 1 fps
    (the e2e bench's kind) skipped none (docs/configuration.md)."""

    enabled: bool = False
    # the detector runs on a frame farther than this (cheap-embedding distance, 0-2) from
    # every frame of the video it already ran on; scene cuts measured 0.55-1.3
    min_distance: float = Field(0.15, gt=0, lt=2)
    # and at the latest after this many skipped frames in a row (null: no floor)
    max_skip_frames: int | None = Field(30, ge=1)


class InferenceConfig(_Section):
    # null: the bundled YOLOv3-tiny (COCO-80); a local path, s3:// or package://<dist>/<file>
    model_uri: str | None = None
    task_name: str = "object-detection"  # the Lightly prediction task the results are written under
    confidence_threshold: float = Field(0.3, ge=0, le=1)
    device: str = "auto"
    half: bool | Literal["auto"] = "auto"
    # auto: torch on CUDA, else the fastest runtime measured here for the model (cached)
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    batch_size: int = Field(16, ge=1)
    imgsz: int | None = Field(None, ge=32)  # null: the size the model was trained at
    # run the detector in the extract task on frames as they are decoded (CPU deployments);
    # false: the infer task (gpu pool and queue) reads the frames back from S3
    overlap: bool = True
    prefetch: int = Field(64, ge=1)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)


DEFAULT_PROPORTION = 0.1  # the budget when the config gives none: 10 % of the input frames
DEFAULT_OBJECTIVE_FLOOR = 0.5  # a soft objective's factor never drops below this
DEFAULT_COLD_START_LABELS = 500  # datapool size below which the default recipe is cold-start


class SelectionConfig(_Section):
    n_samples: int | None = Field(None, ge=1)
    proportion_samples: float | None = Field(None, gt=0, le=1)
    strategies: list[dict[str, Any]] = Field(default_factory=list)
    balance: bool | dict[str, float] | None = None
    balance_strategy: Literal["TARGET", "UNIFORM", "INPUT"] | None = None
    random_seed: int = 0
    # every soft objective (WEIGHTS, BALANCE, TYPICALITY, SIMILARITY) scales its frames to
    # [objective_floor, 1] before the product, so it lowers a frame's value but never vetoes it
    objective_floor: float = Field(DEFAULT_OBJECTIVE_FLOOR, ge=0, le=1)
    # the default recipe (no strategies given) is diversity x typicality while the datapool has
    # fewer frames than this, shifts to diversity x uncertainty up to twice it; 0: never
    cold_start_labels: int = Field(DEFAULT_COLD_START_LABELS, ge=0)
    # batches with more input frames are selected in shards (mapped tasks of at most this
    # many frames, whole videos each) whose winners a second greedy pass merges
    shard_max_frames: int = Field(500_000, ge=1)
    # each shard keeps ceil(oversample x budget) winners for the merge
    shard_oversample: float = Field(2.0, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if isinstance(data.get("balance_strategy"), str):
                data = {**data, "balance_strategy": data["balance_strategy"].upper()}
            if data.get("n_samples") is None and data.get("proportion_samples") is None:
                data = {**data, "proportion_samples": DEFAULT_PROPORTION}
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> SelectionConfig:
        if self.n_samples is not None and self.proportion_samples is not None:
            raise ValueError("give exactly one of n_samples or proportion_samples, not both")
        return self


class LabelingConfig(_Section):
    backend: Literal["label_studio", "encord"] = "label_studio"
    project_name: str = "framesift"
    # none: every video in project_name; folder: a project "<project_name> / <folder>" per video
    # folder below storage.videos_prefix (videos directly under it stay in project_name)
    project_per: Literal["none", "folder"] = "none"
    labeler: str | None = None
    reviewer: str | None = None

    @model_validator(mode="after")
    def _encord_has_one_project(self) -> LabelingConfig:
        if self.backend == "encord" and self.project_per != "none":
            raise ValueError(
                f"labeling.project_per: {self.project_per} needs labeling.backend: label_studio; "
                "the Encord backend keeps every video in labeling.project_name (set project_per: none)"
            )
        return self


class TrackingConfig(_Section):
    project_name: str = "active_learning_runs"
    offline: bool = True


METRICS = ("map50_95", "map50", "precision", "recall", "accuracy")


class BudgetConfig(_Section):
    """Spending limits of the loop; null: no limit."""

    max_labels: int | None = Field(None, ge=0)  # labeled frames in all
    cost_per_label: float = Field(0.0, ge=0)  # what one labeled frame costs
    max_cost: float | None = Field(None, ge=0)
    max_gpu_hours: float | None = Field(None, ge=0)  # training time of every model so far


class EvaluationConfig(_Section):
    """Stopping criteria: every retrain gate checks them all and writes a `decisions` record."""

    # the fixed, versioned test set: an s3:// URI of a test set's data.yaml (framesift writes
    # a manifest.json beside it with its version); null: no test set yet, the gate holds
    test_set: str | None = None
    # met when every one holds (>=); detection: map50_95, map50, precision, recall; accuracy is
    # the share of test frames whose predictions match the labels exactly (the book's 0.95)
    targets: dict[str, float] = Field(default_factory=lambda: {"map50_95": 0.5})
    stability_k: int = Field(2, ge=1)  # targets met on this many consecutive evaluations
    metric: str = "map50_95"  # the metric that diminishing returns, overfitting and promotion use
    diminishing_k: int | None = Field(3, ge=1)  # rounds looked back over; null: off
    diminishing_epsilon: float = Field(0.005, ge=0)  # stop when the metric gained less than this
    max_train_test_gap: float | None = Field(0.3, ge=0)  # hold when train - test exceeds it; null: off
    min_new_labels: int = Field(50, ge=0)  # hold until this many frames were labeled since the last training
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @model_validator(mode="after")
    def _known_metrics(self) -> EvaluationConfig:
        unknown = sorted({*self.targets, self.metric} - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
        return self


class TrainingConfig(_Section):
    """Retraining with ultralytics from a training-set version, and the model registry."""

    # champion: fine-tune the current champion; else a checkpoint path/s3 URI, or an
    # ultralytics model yaml (e.g. yolov8n.yaml: random weights); null: the inference default
    base_model: str | None = "champion"
    epochs: int = Field(30, ge=1)
    imgsz: int = Field(640, ge=32)
    batch: int = Field(16, ge=1)
    device: str = "auto"
    workers: int = Field(0, ge=0)  # dataloader processes (0: in the task's process)
    val_fraction: float = Field(0.2, ge=0, lt=1)  # of a training-set version, by frame-name hash
    seed: int = 0
    promotion_margin: float = Field(0.01, ge=0)  # challenger must beat the champion by this (metric)
    serve_champion: bool = True  # inference uses the champion model when there is one


class ReviewConfig(_Section):
    """Model-label disagreement review and annotator quality."""

    match_iou: float = Field(0.5, gt=0, le=1)  # a prediction and a label are the same object
    localisation_iou: float = Field(0.75, gt=0, le=1)  # below it a matched box is poorly localised
    disagreement_threshold: float = Field(0.5, ge=0)  # issues per object above which a frame is reviewed
    min_accuracy: float = Field(0.90, ge=0, le=1)  # annotator targets on control frames
    min_kappa: float = Field(0.80, ge=-1, le=1)


class DriftSignalConfig(_Section):
    enabled: bool = True
    window_frames: int | None = Field(None, ge=10)  # this signal's window; null: drift.window_frames


class DriftUncertaintyConfig(DriftSignalConfig):
    score: Literal["uncertainty_entropy", "uncertainty_least_confidence", "uncertainty_margin"] = (
        "uncertainty_entropy"
    )
    low_confidence: float = Field(0.5, gt=0, lt=1)  # a box scoring below this is low-confidence
    low_confidence_rise: float = Field(0.15, gt=0)  # threshold: window minus reference fraction
    uncertainty_rise: float = Field(0.10, gt=0)  # threshold: window minus reference mean score
    p_value: float = Field(0.01, gt=0, le=1)  # a rise must also be significant (one-sided z-test)
    min_boxes: int = Field(20, ge=1)  # fewer boxes in reference or window: insufficient data


class DriftEmbeddingConfig(DriftSignalConfig):
    pca_components: int = Field(16, ge=1)
    permutations: int = Field(200, ge=20)
    p_value: float = Field(0.01, gt=0, le=1)
    mmd2_threshold: float = Field(0.05, gt=0)  # effect size: MMD^2 with the median-heuristic kernel
    max_reference_frames: int = Field(1000, ge=10)  # reference sample for the MMD test


class DriftClassConfig(DriftSignalConfig):
    psi_threshold: float = Field(0.25, gt=0)
    js_threshold: float = Field(0.2, gt=0, le=1)
    p_value: float = Field(0.01, gt=0, le=1)  # the shift must also be significant (chi-square test)


class DriftOutlierConfig(DriftSignalConfig):
    percentile: float = Field(99.0, gt=50, lt=100)  # of the reference's own nearest-neighbour distance
    rate_threshold: float = Field(0.10, gt=0, le=1)  # threshold: fraction of window frames beyond it


class DriftCommitteeConfig(DriftSignalConfig):
    tasks: list[str] = Field(default_factory=list)  # other prediction tasks (models) on the same frames
    disagreement_rise: float = Field(0.10, gt=0)


class AlertChannelConfig(_Section):
    type: Literal["webhook", "smtp"]
    conn_id: str  # the Airflow connection with the URL / server and credentials
    to: list[str] = Field(default_factory=list)  # smtp: recipients (default: the connection's extra "to")


class DriftAlertsConfig(_Section):
    channels: list[AlertChannelConfig] = Field(default_factory=list)
    critical_factor: float = Field(2.0, gt=1)  # value >= factor x threshold: critical (re-alerts)
    resolve_after_windows: int = Field(3, ge=1)  # consecutive normal windows that resolve an incident
    notify_resolved: bool = False
    sample_frames: int = Field(6, ge=0, le=50)  # frames linked from an alert


class DriftLabelingConfig(_Section):
    enabled: bool = True  # select the most drifted frames of an alarming window for labeling
    n_samples: int = Field(20, ge=1)
    # ack: the selected frames wait for on-call (`framesift drift ack ID` sends them, with
    # --no-labeling drops them: a broken camera needs a fix, not labels); auto: sent at once
    mode: Literal["ack", "auto"] = "ack"


class DriftConfig(_Section):
    window_frames: int = Field(500, ge=10)
    min_window_frames: int = Field(30, ge=2)  # a source with fewer new frames is not evaluated
    reference_frames: int = Field(2000, ge=10)
    reference_prefix: str | None = None  # videos under it are the reference; null: the earliest inferred
    # the reference inferred by another model than the serving one is re-inferred with it;
    # false: the comparison is suspended (with the reason in the report) until it is fixed
    reference_reinfer: bool = True
    # one window (and reference) per video folder, i.e. per camera/source: footage from
    # another camera is not drift; "all": one window over everything
    group_by: Literal["all", "folder"] = "folder"
    schedule: str | None = "0 * * * *"  # also run on this cron; null: only when new inference lands
    seed: int = 0
    uncertainty: DriftUncertaintyConfig = Field(default_factory=DriftUncertaintyConfig)
    embedding: DriftEmbeddingConfig = Field(default_factory=DriftEmbeddingConfig)
    class_distribution: DriftClassConfig = Field(default_factory=DriftClassConfig)
    outliers: DriftOutlierConfig = Field(default_factory=DriftOutlierConfig)
    committee: DriftCommitteeConfig = Field(default_factory=DriftCommitteeConfig)
    alerts: DriftAlertsConfig = Field(default_factory=DriftAlertsConfig)
    labeling: DriftLabelingConfig = Field(default_factory=DriftLabelingConfig)


class ClaimsConfig(_Section):
    """The lease a stage holds on a video (or a queue record) while it works on it."""

    lease_s: float = Field(120.0, ge=1)  # a claim not renewed for this long is taken over
    heartbeat_s: float = Field(20.0, gt=0)  # how often a working stage renews its lease

    @model_validator(mode="after")
    def _beats_within_the_lease(self) -> ClaimsConfig:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("claims.heartbeat_s must be at most half of claims.lease_s")
        return self


class PipelineConfig(_Section):
    important_classes: list[str] = Field(default_factory=list)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    mongo: MongoConfig = Field(default_factory=MongoConfig)
    connections: ConnectionsConfig = Field(default_factory=ConnectionsConfig)
    claims: ClaimsConfig = Field(default_factory=ClaimsConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    labeling: LabelingConfig = Field(default_factory=LabelingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
