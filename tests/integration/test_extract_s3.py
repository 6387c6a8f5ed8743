"""extract_to_s3 against moto's S3 server on loopback: keys, manifest, quarantine, re-runs."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from framesift.config.loading import parse_config
from framesift.ingest.extract import extract_to_s3
from framesift.io import layout
from framesift.io.s3 import ensure_bucket, get_json, head, list_objects, make_client, put_bytes, upload
from framesift.local.synth import make_video
from tests import videofaults

pytestmark = pytest.mark.slow

IN_BUCKET, OUT_BUCKET = "uploads", "frames"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    client = make_client(endpoint_url=s3_endpoint)
    ensure_bucket(client, IN_BUCKET)
    ensure_bucket(client, OUT_BUCKET)
    return client


@pytest.fixture(scope="module")
def good_video(s3, tmp_path_factory):
    path = make_video(tmp_path_factory.mktemp("src") / "street.mp4", seconds=4, fps=25)
    key = "cams/street cam #1.mp4"
    upload(s3, path, IN_BUCKET, key)
    return head(s3, IN_BUCKET, key)


def pipeline_cfg(**extraction):
    return parse_config(
        {
            "storage": {"bucket": IN_BUCKET, "output_bucket": OUT_BUCKET, "output_prefix": "fs/"},
            "extraction": {"sampling": "fps", "fps": 1.0, "upload_workers": 4, **extraction},
        }
    )


class RecordingS3:
    """Delegates to a boto3 client and records the keys of put_object calls, in order."""

    def __init__(self, client):
        self._client = client
        self.puts: list[str] = []

    def put_object(self, **kwargs):
        self.puts.append(kwargs["Key"])
        return self._client.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def keys_under(s3, prefix: str) -> list[str]:
    return sorted(o.key for o in list_objects(s3, OUT_BUCKET, prefix + "/"))


def test_frames_land_under_the_layout_keys_and_the_manifest_comes_last(s3, good_video, tmp_path):
    cfg = pipeline_cfg()
    recording = RecordingS3(s3)
    manifest = extract_to_s3(
        recording, IN_BUCKET, good_video.key, good_video.etag, cfg, work_dir=tmp_path / "work"
    )

    vid = layout.video_id(IN_BUCKET, good_video.key, good_video.etag)
    prefix, manifest_key = layout.frames_prefix(cfg, vid), layout.manifest_key(cfg, vid)
    names = [f"street_cam_1-{i:03d}-mp4.png" for i in (0, 25, 50, 75)]
    assert keys_under(s3, prefix) == [f"{prefix}/{n}" for n in names]
    assert recording.puts[-1] == manifest_key
    assert sorted(recording.puts[:-1]) == [f"{prefix}/{n}" for n in names]

    frame = s3.get_object(Bucket=OUT_BUCKET, Key=f"{prefix}/{names[0]}")
    assert frame["ContentType"] == "image/png"
    assert frame["Body"].read(8) == b"\x89PNG\r\n\x1a\n"

    stored = get_json(s3, OUT_BUCKET, manifest_key)
    assert stored == manifest
    assert manifest["status"] == "extracted" and manifest["reason"] is None
    assert manifest["video_id"] == vid
    assert manifest["source"] == {"bucket": IN_BUCKET, "key": good_video.key, "etag": good_video.etag}
    assert manifest["frames_prefix"] == f"s3://{OUT_BUCKET}/{prefix}/"
    assert manifest["manifest_uri"] == f"s3://{OUT_BUCKET}/{manifest_key}"
    assert manifest["frame_names"] == names
    assert manifest["frame_indices"] == [0, 25, 50, 75]
    # one keyframe a second: each sampled frame is a keyframe, the only packet decoded
    counts = ("frames_read", "frames_written", "frames_skipped", "frames_undecoded", "frames_damaged")
    assert tuple(manifest[k] for k in counts) == (4, 4, 0, 96, 0)
    assert (manifest["frames_duplicate"], manifest["frames_corrupt"]) == (0, 0)
    assert (manifest["width"], manifest["height"], manifest["fps"], manifest["codec"]) == (
        320,
        240,
        25.0,
        "h264",
    )
    assert manifest["image_format"] == "png"
    assert manifest["sampling"]["sampling"] == "fps" and manifest["sampling"]["fps"] == 1.0
    assert list((tmp_path / "work").iterdir()) == []  # the download is gone


def test_rerun_is_idempotent_and_clears_stale_frames(s3, good_video, tmp_path):
    cfg = pipeline_cfg()
    vid = layout.video_id(IN_BUCKET, good_video.key, good_video.etag)
    prefix = layout.frames_prefix(cfg, vid)

    first = extract_to_s3(s3, IN_BUCKET, good_video.key, good_video.etag, cfg, work_dir=tmp_path)
    keys = keys_under(s3, prefix)
    put_bytes(s3, OUT_BUCKET, f"{prefix}/street_cam_1-010-mp4.png", b"left by an older sampling")

    second = extract_to_s3(s3, IN_BUCKET, good_video.key, good_video.etag, cfg, work_dir=tmp_path)
    assert keys_under(s3, prefix) == keys
    assert {k: v for k, v in second.items() if k != "elapsed_s"} == {
        k: v for k, v in first.items() if k != "elapsed_s"
    }


def test_bad_file_gets_a_quarantine_manifest(s3, tmp_path):
    path = videofaults.text_file(tmp_path / "notes.mp4")
    upload(s3, path, IN_BUCKET, "cams/notes.mp4")
    obj = head(s3, IN_BUCKET, "cams/notes.mp4")
    cfg = pipeline_cfg()

    manifest = extract_to_s3(s3, IN_BUCKET, obj.key, obj.etag, cfg, work_dir=tmp_path / "work")

    vid = layout.video_id(IN_BUCKET, obj.key, obj.etag)
    assert manifest["status"] == "quarantined"
    assert manifest["reason"].startswith("not a video")
    assert manifest["frames_written"] == 0 and manifest["frame_names"] == []
    assert get_json(s3, OUT_BUCKET, layout.manifest_key(cfg, vid)) == manifest
    assert keys_under(s3, layout.frames_prefix(cfg, vid)) == []
    assert list((tmp_path / "work").iterdir()) == []


def test_over_limit_quarantine_keeps_the_probe(s3, good_video, tmp_path):
    cfg = pipeline_cfg(max_duration_s=2)
    manifest = extract_to_s3(s3, IN_BUCKET, good_video.key, good_video.etag, cfg, work_dir=tmp_path)
    assert manifest["status"] == "quarantined"
    assert manifest["reason"] == "duration 4.0 s over limit 2.0 s"
    assert (manifest["width"], manifest["height"], manifest["n_frames"]) == (320, 240, 100)


def test_jpeg_frames_get_the_jpeg_content_type(s3, good_video, tmp_path):
    cfg = pipeline_cfg(image_format="jpg")
    cfg.storage.output_prefix = "fs-jpg/"
    manifest = extract_to_s3(s3, IN_BUCKET, good_video.key, good_video.etag, cfg, work_dir=tmp_path)
    first = manifest["frame_names"][0]
    assert first.endswith(".jpg")
    obj = s3.get_object(
        Bucket=OUT_BUCKET, Key=f"{manifest['frames_prefix'][len(f's3://{OUT_BUCKET}/') :]}{first}"
    )
    assert obj["ContentType"] == "image/jpeg"


def test_storage_errors_raise_and_the_download_is_removed(s3, good_video, tmp_path):
    cfg = pipeline_cfg()
    cfg.storage.output_bucket = "no-such-bucket"
    with pytest.raises(ClientError):
        extract_to_s3(s3, IN_BUCKET, good_video.key, good_video.etag, cfg, work_dir=tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []
