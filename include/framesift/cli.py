"""The framesift command: the stages without Airflow, the registry, the local stack and
a local Airflow, the demo."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

import yaml

from framesift.config.loading import load_config
from framesift.config.schema import ConfigError, PipelineConfig
from framesift.drift import incidents, response
from framesift.drift.monitor import compute, format_report
from framesift.drift.report import build_html
from framesift.ingest.damage import damage_summary, extraction_line
from framesift.ingest.discovery import find_new_videos
from framesift.ingest.registry import FAILED, VIDEOS, count_by_status, ensure_indexes, recent, register
from framesift.ingest.registry import get as get_video
from framesift.ingest.stage import extract_one, failure_item, failure_line, requeue_videos
from framesift.io.s3 import head, make_client, parse_s3_uri
from framesift.local import airflow as local_airflow
from framesift.local import stack
from framesift.tracking import preflight
from framesift.tracking.runs import format_run, recent_runs


def connect(cfg: PipelineConfig):
    """S3 client and Mongo database from the environment, else from a running `stack up`."""
    from pymongo import MongoClient

    env = {**stack.env_from_state(), **os.environ}
    mongo_uri = env.get("FRAMESIFT_MONGO_URI")
    if not mongo_uri:
        raise SystemExit(
            "no MongoDB to talk to: set FRAMESIFT_MONGO_URI (and FRAMESIFT_S3_ENDPOINT_URL for a non-AWS store), "
            "or start the local stack with `framesift stack up`"
        )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if key in env:
            os.environ.setdefault(key, env[key])
    s3 = make_client(endpoint_url=env.get("FRAMESIFT_S3_ENDPOINT_URL"))
    db = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)[cfg.mongo.database]
    return s3, db


def cmd_stack(args) -> int:
    if args.action == "up":
        info = stack.up()
        print(f"stack up (pid {info.pid}): S3 {info.s3_endpoint}  MongoDB {info.mongo_uri}")
        print('point a shell at it with:  eval "$(framesift stack env)"   stop it with: framesift stack down')
    elif args.action == "down":
        print("stack stopped" if stack.down() else "no stack running")
    elif args.action == "env":
        env = stack.env_from_state()
        if not env:
            print("# no stack running: framesift stack up", file=sys.stderr)
            return 1
        for key, value in env.items():
            print(f"export {key}='{value}'")
    elif args.action == "status":
        info = stack.read_state()
        print(
            f"running (pid {info.pid}): S3 {info.s3_endpoint}  MongoDB {info.mongo_uri}"
            if info
            else "not running"
        )
    return 0


def cmd_airflow(args) -> int:
    if args.action == "up":
        return local_airflow.up(port=args.port, config_path=args.config)
    if args.action == "down":
        print("local Airflow stopped" if local_airflow.down() else "no local Airflow running")
        return 0
    running = local_airflow.read_pid_file()
    print(f"running (pid {running['pid']}): {running['url']}" if running else "not running")
    return 0


def cmd_config(args) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if args.no_model:
        return 0
    problems = check_model_and_classes(cfg)
    for problem in problems:
        print(f"config error: {problem}", file=sys.stderr)
    if not problems:
        print(
            f"model {cfg.inference.model_uri or 'default'}: found"
            + (
                f"; important_classes {list(cfg.important_classes)} are its classes"
                if cfg.important_classes
                else ""
            ),
            file=sys.stderr,
        )
    return 2 if problems else 0


def check_model_and_classes(cfg: PipelineConfig) -> list:
    """The preflight's checks (the same a run does first): the model exists and knows every
    ``important_classes`` entry. An ``s3://`` model is read with the environment's (or the
    running local stack's) S3 settings."""
    env = {**stack.env_from_state(), **os.environ}
    s3 = make_client(endpoint_url=env.get("FRAMESIFT_S3_ENDPOINT_URL") or None)
    problems = preflight.check_model(s3, cfg)
    if problems or not cfg.important_classes:
        return problems
    try:
        names = preflight.model_classes(cfg, s3)
    except Exception as exc:  # noqa: BLE001 - a model that does not load is the problem
        return [
            preflight.Problem("inference.model_uri", f"the model does not load: {exc}", "fix the checkpoint")
        ]
    return preflight.check_classes(cfg, names)


def cmd_discover(args) -> int:

    cfg = load_config(args.config)
    s3, db = connect(cfg)
    new = find_new_videos(s3, db, cfg, args.prefix)
    for obj in new:
        print(f"{obj.uri}\t{obj.size}\t{obj.etag}")
    print(f"{len(new)} new video(s)", file=sys.stderr)
    return 0


# exit codes of `framesift extract` (docs/operations.md): 2 is argparse's usage error
EXIT_OK, EXIT_FAILED, EXIT_QUARANTINED = 0, 1, 3


def cmd_extract(args) -> int:
    """0: every input extracted; 3: some quarantined (bad input, each with its record), none
    failed; 1: at least one failed (storage, database, ...: retry it)."""
    cfg = load_config(args.config)
    s3, db = connect(cfg)
    ensure_indexes(db)
    work = stack.var_dir() / "work"
    work.mkdir(parents=True, exist_ok=True)
    run_id = f"cli-{int(time.time())}"
    failed = quarantined = False
    for uri in args.uris:
        try:
            bucket, key = parse_s3_uri(uri)
            ref, _ = register(db, head(s3, bucket, key), run_id)
            out = extract_one(s3, db, cfg, ref, run_id=run_id, work_dir=str(work))
        except Exception as exc:  # noqa: BLE001 - reported per input; the others go on
            print(f"{uri}: failed ({type(exc).__name__}: {exc})", file=sys.stderr)
            failed = True
            continue
        doc = get_video(db, ref.video_id) or {}
        print(
            f"{uri}: "
            + (
                extraction_line(doc.get("frames"), out["status"])
                if out["status"] != "quarantined"
                else "quarantined"
            )
            + (f" ({out['reason']})" if out["reason"] else "")
            + (f" at {out['frames_prefix']}" if out.get("frames_prefix") else "")
        )
        quarantined |= out["status"] == "quarantined"
        failed |= out["status"] == "failed"
    return EXIT_FAILED if failed else EXIT_QUARANTINED if quarantined else EXIT_OK


def cmd_videos(args) -> int:
    cfg = load_config(args.config)
    _, db = connect(cfg)
    if args.action == "requeue":
        return _requeue(db, args)
    if args.keys:
        print(
            "usage: framesift videos [--failed] [--limit N] | framesift videos requeue KEY... | --failed",
            file=sys.stderr,
        )
        return 2
    print("  ".join(f"{k}: {v}" for k, v in sorted(count_by_status(db).items())) or "no videos registered")
    if args.failed:
        docs = list(
            db[VIDEOS].find({"status": FAILED}, {"history": 0}).sort("updated_at", -1).limit(args.limit)
        )
        for doc in docs:
            print(f"{doc['updated_at']:%Y-%m-%d %H:%M:%S}  {failure_line(failure_item(doc))}")
        if docs:
            print(
                "\nrequeue one: framesift videos requeue KEY --reason '...'; all: framesift videos requeue --failed"
            )
        return 0
    for doc in recent(db, args.limit):
        frames = (doc.get("frames") or {}).get("frames_written", "-")
        reason = f"  ({doc['reason']})" if doc.get("reason") else ""
        damaged = (doc.get("frames") or {}).get("frames_damaged")
        damage = f", {damaged} damaged ({damage_summary(doc['frames'])})" if damaged else ""
        print(
            f"{doc['updated_at']:%Y-%m-%d %H:%M:%S}  {doc['status']:<12} {frames!s:>6} frames{damage}  "
            f"s3://{doc['bucket']}/{doc['key']}{reason}"
        )
    return 0


def _requeue(db, args) -> int:
    if not args.keys and not args.failed:
        print(
            "framesift videos requeue: name the S3 keys, or --failed for every failed video", file=sys.stderr
        )
        return 2
    who = f"{os.environ.get('USER') or 'cli'}@{socket.gethostname()}"
    reason = args.reason or "requeued with the framesift command (no reason given)"
    moved, missing = requeue_videos(db, keys=args.keys, all_failed=args.failed, reason=reason, by=who)
    for doc in moved:
        print(f"requeued {doc['key']}: back to {doc['status']} (failed at {doc['requeued'][-1]['stage']})")
    for key in missing:
        print(f"no failed video with key {key} (framesift videos --failed lists them)", file=sys.stderr)
    if moved:
        print(
            f"{len(moved)} video(s) requeued (reason: {reason}); the next framesift_ingest run retries them"
        )
    elif not missing:
        print("no failed videos")
    return 1 if missing else 0


def cmd_status(args) -> int:

    cfg = load_config(args.config)
    _, db = connect(cfg)
    docs = recent_runs(db, args.limit)
    if not docs:
        print("no runs recorded yet")
    for doc in docs:
        print(format_run(doc))
    counts = count_by_status(db)
    if counts:
        print("registry: " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_drift(args) -> int:

    cfg = load_config(args.config)
    s3, db = connect(cfg)
    if args.action == "ack":
        if not args.incident:
            print("usage: framesift drift ack INCIDENT_ID [--no-labeling]", file=sys.stderr)
            return 2
        by = args.by or os.environ.get("USER") or "cli"
        doc = incidents.ack(db, args.incident, by)
        active = doc or db[incidents.ALERTS].find_one({"_id": args.incident, "state": incidents.ACKED})
        if not active:
            print(f"no open incident {args.incident}")
            return 1
        print(f"acked {args.incident}" if doc else f"{args.incident} was acked already")
        for sel in response.decide_held(db, args.incident, label=not args.no_labeling, by=by):
            n = len(sel["selected"])
            if args.no_labeling:
                print(f"  {sel['_id']}: {n} drifted frames of {sel['source']} dropped (not sent to labeling)")
            else:
                print(
                    f"  {sel['_id']}: {n} drifted frames of {sel['source']} approved: the next "
                    "framesift_drift run sends them to labeling (hourly, or trigger it)"
                )
        return 0

    report = compute(s3, db, cfg)
    print(format_report(report))
    page = Path(args.html)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(build_html(s3, db, cfg, report), encoding="utf-8")
    print(f"HTML report: {page.resolve()}")
    open_ones = incidents.open_incidents(db)
    waiting = response.held(db)
    if waiting:
        print(
            f"\ndrifted frames waiting for an ack (framesift drift ack ID; --no-labeling drops them): {len(waiting)}"
        )
        for sel in waiting:
            ids = ", ".join(sel["labeling"].get("incident_ids") or [])
            print(f"  {sel['_id']}  {len(sel['selected'])} frames of {sel['source']}  incidents {ids}")
    print(f"\nopen incidents: {len(open_ones)}")
    for inc in open_ones:
        values = ", ".join(
            f"{v['name']} {v['value']:.4g}/{v['threshold']:g}"
            for v in inc.get("values") or []
            if v.get("value") is not None
        )
        print(
            f"  {inc['_id']}  {inc['state']} {inc['level']}  first {inc['first_seen']:%Y-%m-%d %H:%M}"
            f"  last {inc['last_seen']:%Y-%m-%d %H:%M}  {values}  videos {len(inc.get('videos') or [])}"
        )
        for what, link in (("report", inc.get("report_html_uri")), ("labeling", inc.get("labeling_urls"))):
            if link:
                print(f"      {what}: {link if isinstance(link, str) else ', '.join(link)}")
    return 0


def cmd_demo(args) -> int:
    from framesift.local.demo import run_demo  # PyAV/OpenCV (generated videos) load only here

    return run_demo(keep_stack=args.keep)


def cmd_simulate(args) -> int:
    from framesift.loop.simulate import SimSettings, run_local  # PyAV/OpenCV load only here

    settings = SimSettings(
        rounds=args.rounds,
        videos_per_round=args.videos_per_round,
        budget_per_round=args.budget,
        seed_labels=args.seed_labels,
        epochs=args.epochs,
        imgsz=args.imgsz,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    result = run_local(settings, args.out)
    print((Path(args.out) / "table.txt").read_text())
    print("label efficiency:", result["efficiency"])
    print(f"saved: {args.out}/simulation.json, table.txt, map_per_round.png")
    return 0


# libraries whose INFO lines say nothing a person asked for ("Found credentials in environment variables")
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "pymongo", "clearml", "matplotlib", "PIL")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="framesift", description=__doc__)
    parser.add_argument("--config", help="pipeline YAML (default: $FRAMESIFT_CONFIG or the packaged default)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="the embedded local stack (S3, MongoDB on loopback)")
    p.add_argument("action", choices=["up", "down", "env", "status"])
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser(
        "airflow",
        help="a local Airflow on the embedded stack with Label Studio (up: until Ctrl-C; down; status)",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--port", type=int, default=8080, help="the api-server's port (default 8080)")
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser(
        "config", help="validate a config file, print it resolved, check the model and important_classes"
    )
    p.add_argument("file", nargs="?")
    p.add_argument("--no-model", action="store_true", help="skip the model checks (file and class names)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("discover", help="list uploads not yet in the registry")
    p.add_argument("--prefix")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("extract", help="register and extract frames of s3:// videos (no Airflow)")
    p.add_argument("uris", nargs="+")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "videos",
        help="the videos registry: counts and latest records; --failed; requeue KEY... or --failed",
        description="List the registry (--failed: the failed videos, with the stage, error and fix), or "
        "requeue failed videos: framesift videos requeue KEY [KEY ...] --reason WHY, or requeue --failed.",
    )
    p.add_argument("action", nargs="?", choices=["list", "requeue"], default="list")
    p.add_argument("keys", nargs="*", help="requeue: S3 keys of failed videos")
    p.add_argument("--failed", action="store_true", help="list: only failed videos; requeue: all of them")
    p.add_argument("--reason", help="requeue: why (recorded on each video)")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_videos)

    p = sub.add_parser("status", help="the last pipeline runs: counts, problems, ClearML links")
    p.add_argument("--limit", type=int, default=10)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("drift", help="drift: current signals and open incidents (report), ack an incident")
    p.add_argument("action", choices=["report", "ack"])
    p.add_argument("incident", nargs="?", help="ack: the incident id")
    p.add_argument("--by", help="ack: who is on it (default: $USER)")
    p.add_argument(
        "--no-labeling",
        action="store_true",
        help="ack: drop the drifted frames held for this incident instead of sending them to labeling",
    )
    p.add_argument(
        "--html",
        default=str(stack.var_dir() / "drift" / "report.html"),
        help="report: where to write the report as a page (HTML with the plots and frames)",
    )
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("demo", help="run framesift_ingest on the embedded stack with sample videos")
    p.add_argument("--keep", action="store_true", help="keep the stack running afterwards until Ctrl-C")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="the closed loop on generated videos vs uniform and random sampling")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--videos-per-round", type=int, default=2)
    p.add_argument("--budget", type=int, default=8, help="frames labeled per round, by each strategy")
    p.add_argument("--seed-labels", type=int, default=8, help="labels of the shared first model")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--error-rate", type=float, default=0.0, help="the scripted annotator's error rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(stack.var_dir() / "simulate"))
    p.set_defaults(func=cmd_simulate)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
