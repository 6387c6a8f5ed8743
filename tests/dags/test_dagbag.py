"""Every DAG imports cleanly and carries what operators need in the UI."""

import pytest

from framesift.local.stack import project_root


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(project_root() / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "framesift_ingest" in dagbag.dag_ids


def test_dags_have_docs_tags_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and "When it fails" in dag.doc_md, dag_id
        assert "framesift" in dag.tags, dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id}"
            assert task.retry_exponential_backoff, f"{dag_id}.{task.task_id}"


def test_ingest_is_asset_scheduled_and_maps_per_video(dagbag):
    dag = dagbag.get_dag("framesift_ingest")
    extract = dag.get_task("extract_frames")
    # the video key, and a note after it when the video had nothing to do in this run
    assert extract.map_index_template.startswith("{{ task.video['key'] }}")
    assert "framesift_note" in extract.map_index_template
    assert dag.get_task("check_setup").downstream_task_ids == {"register_uploads"}
    assert dag.get_task("summary").trigger_rule == "all_done"
    (asset,) = dag.timetable.asset_condition.objects  # plus a cron that drains leftovers
    assert asset.name == "framesift_uploads" and asset.watchers


def test_dag_files_stay_light():
    """Heavy libraries are imported inside tasks, never at DAG parse time."""
    import subprocess
    import sys

    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag; "
        f"DagBag(dag_folder={str(project_root() / 'dags')!r}); "
        "heavy = [m for m in ('torch', 'ultralytics', 'av', 'cv2', 'clearml', 'encord') if m in sys.modules]; "
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("HEAVY=")]
    assert line == "HEAVY=", f"imported at parse time: {line[6:]}"


@pytest.mark.parametrize("mode", ["list", "sqs"])
def test_uploads_asset_watcher_follows_discovery_mode(mode):
    from framesift.config.loading import parse_config
    from framesift_airflow.assets import uploads_asset

    cfg = parse_config({"discovery": {"mode": mode, "sqs_queue_url": "http://127.0.0.1:1/123456789012/q"}})
    asset = uploads_asset(cfg)
    (watcher,) = asset.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert asset.uri == "s3://framesift/videos"  # Airflow normalises the trailing slash away
    if mode == "sqs":
        # MessageQueueTrigger(scheme="sqs") hands over to the amazon provider's SQS trigger
        assert classpath == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
        assert (
            kwargs["sqs_queue"] == "http://127.0.0.1:1/123456789012/q"
            and kwargs["aws_conn_id"] == "aws_default"
        )
    else:
        assert classpath == "framesift_airflow.triggers.NewVideosTrigger"


def test_ingest_trigger_form_schema_and_validation(dagbag):
    """What the UI's trigger form renders, and that it refuses bad input."""
    import copy

    from airflow.sdk.definitions.param import ParamsDict

    dag = dagbag.get_dag("framesift_ingest")
    schema = {name: dag.params.get_param(name).schema for name in dag.params}
    assert set(schema) == {
        "prefix",
        "n_samples",
        "proportion_samples",
        "preset",
        "dry_run",
        "requeue",
        "requeue_reason",
    }
    assert schema["n_samples"]["minimum"] == 1 and schema["proportion_samples"]["maximum"] == 1
    assert set(schema["preset"]["enum"]) == {"config", "diverse", "uncertain", "balanced"}
    assert all(schema[n].get("title") and dag.params.get_param(n).description for n in schema)

    def validate(**values):
        params = copy.deepcopy(dag.params)
        for key, value in values.items():
            params[key] = value
        return ParamsDict(params).validate()

    assert validate()["preset"] == "config"  # the defaults are valid
    assert validate(n_samples=25, preset="balanced", dry_run=True)["n_samples"] == 25
    assert validate(requeue=["videos/a.mp4"], requeue_reason="model fixed")["requeue"] == ["videos/a.mp4"]
    for bad in (
        {"n_samples": 0},
        {"n_samples": "ten"},
        {"proportion_samples": 1.5},
        {"proportion_samples": 0},
        {"preset": "fastest"},
        {"dry_run": "maybe"},
    ):
        with pytest.raises(Exception, match="(?i)invalid|valid|fail"):
            validate(**bad)


def test_presets_map_onto_the_selection_config():
    from framesift.config.loading import parse_config
    from framesift.selection.presets import PRESETS, selection_overrides
    from framesift.selection.spec import parse_selection

    assert selection_overrides({}) == {}
    assert selection_overrides({"n_samples": 10, "proportion_samples": 0.5}) == {
        "n_samples": 10,
        "proportion_samples": None,
    }
    for preset in PRESETS:
        over = selection_overrides({"preset": preset, "proportion_samples": 0.2})
        sel = parse_config({}).selection.model_copy(update=over)
        assert parse_selection(sel, ["person"]).strategies  # every preset is a valid Lightly-shape config
    with pytest.raises(ValueError, match="unknown selection preset"):
        selection_overrides({"preset": "nope"})


@pytest.mark.parametrize(
    "yaml_text",
    ["extraction:\n  fsp: 2\n", "inference: [unclosed\n"],
    ids=["unknown key", "not YAML"],
)
def test_a_bad_config_keeps_the_dags_listed_with_the_message(tmp_path, yaml_text):
    """A typo in the live YAML used to make framesift_ingest and framesift_drift vanish
    (an import error); now both stay listed, say why in their docs, and fail at check_setup."""
    import json
    import os
    import subprocess
    import sys

    bad = tmp_path / "framesift.yaml"
    bad.write_text(yaml_text)
    code = (
        "import json; from airflow.dag_processing.dagbag import DagBag; "
        f"b = DagBag(dag_folder={str(project_root() / 'dags')!r}); "
        "print('OUT=' + json.dumps({'errors': {k: str(v)[-300:] for k, v in b.import_errors.items()}, "
        "'dags': sorted(b.dag_ids), 'docs': {d: b.dags[d].doc_md[:400] for d in b.dag_ids}, "
        "'first': {d: sorted(t.task_id for t in b.dags[d].roots) for d in b.dag_ids}}))"
    )
    env = {**os.environ, "FRAMESIFT_CONFIG": str(bad)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("OUT=")]
    got = json.loads(line[4:])
    assert got["errors"] == {}
    assert {"framesift_ingest", "framesift_drift"} <= set(got["dags"])
    for dag_id in ("framesift_ingest", "framesift_drift"):
        assert "does not load" in got["docs"][dag_id] and str(bad) in got["docs"][dag_id]
        assert got["first"][dag_id] == ["check_setup"]
