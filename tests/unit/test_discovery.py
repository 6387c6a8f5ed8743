import json

from framesift.ingest.discovery import (
    dedupe,
    is_video_key,
    objects_from_s3_event,
    objects_from_trigger_payloads,
)
from framesift.io.layout import safe_stem, video_ext, video_id
from framesift.io.s3 import S3Object, parse_s3_uri


def record(key, etag="abc", event="ObjectCreated:Put", bucket="b", size=10):
    return {
        "eventName": event,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag, "size": size}},
    }


def test_s3_event_keys_are_url_decoded():
    body = json.dumps({"Records": [record("videos/my+clip%281%29+%C3%A9t%C3%A9.mp4")]})
    (obj,) = objects_from_s3_event(body)
    assert obj == S3Object("b", "videos/my clip(1) été.mp4", "abc", 10)


def test_test_event_and_non_create_events_are_ignored():
    assert objects_from_s3_event(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    assert objects_from_s3_event({"Records": [record("a.mp4", event="ObjectRemoved:Delete")]}) == []
    assert objects_from_s3_event("not json") == []
    assert objects_from_s3_event("[1, 2]") == []


def test_sns_envelope_is_unwrapped():
    inner = json.dumps({"Records": [record("v/a.mp4")]})
    assert [o.key for o in objects_from_s3_event({"Type": "Notification", "Message": inner})] == ["v/a.mp4"]


def test_payloads_from_both_watchers_fold_and_dedupe():
    sqs_payload = {
        "message_batch": [
            {"Body": json.dumps({"Records": [record("v/a.mp4", event="ObjectCreated:Put")]})},
            # a multipart upload can produce a second event for the same object
            {
                "Body": json.dumps(
                    {"Records": [record("v/a.mp4", event="ObjectCreated:CompleteMultipartUpload")]}
                )
            },
            {"Body": json.dumps({"Event": "s3:TestEvent"})},
        ]
    }
    list_payload = {"objects": [{"bucket": "b", "key": "v/b.mp4", "etag": '"e2"', "size": 5}]}
    objs = objects_from_trigger_payloads([sqs_payload, list_payload, sqs_payload])
    assert [(o.key, o.etag) for o in objs] == [("v/a.mp4", "abc"), ("v/b.mp4", "e2")]


def test_dedupe_prefers_events_with_etag():
    objs = dedupe([S3Object("b", "k", "", 0), S3Object("b", "k", "e", 1), S3Object("b", "other", "", 0)])
    assert [(o.key, o.etag) for o in objs] == [("k", "e"), ("other", "")]


def test_video_extension_filter():
    exts = [".mp4", ".webm"]
    assert is_video_key("a/B.MP4", exts) and is_video_key("x.webm", exts)
    assert not is_video_key("notes.txt", exts) and not is_video_key("mp4", exts)


def test_layout_names():
    assert video_id("b", "k", "e") == video_id("b", "k", "e") != video_id("b", "k", "e2")
    assert len(video_id("b", "k", "e")) == 16
    assert safe_stem("videos/my clip (1).final.mp4") == "my_clip_1_.final"
    assert safe_stem("videos/.mp4") == "video"
    assert video_ext("a/b.MP4") == "mp4" and video_ext("noext") == "video"


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/a/b.mp4") == ("bucket", "a/b.mp4")
    for bad in ("http://x/y", "s3://", "/local/path"):
        try:
            parse_s3_uri(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
