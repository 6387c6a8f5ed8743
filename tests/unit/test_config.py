from pathlib import Path

import pytest
import yaml

from framesift.config.loading import BOOK_KEYS, DEFAULT_CONFIG_PATH, load_config, parse_config
from framesift.config.schema import ConfigError


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_config_file_is_valid():
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert cfg.storage.bucket == "framesift"
    assert cfg.extraction.sampling == "fps" and cfg.extraction.fps == 1.0
    assert cfg.inference.confidence_threshold == 0.3
    assert cfg.tracking.project_name == "active_learning_runs"


BOOK_CASES = {
    "videos_folder_in_s3": ("raw/videos/", lambda c: c.storage.videos_prefix),
    "s3_bucket_output": ("frames-out", lambda c: c.storage.output_bucket),
    "model_path_in_s3": ("s3://models/best.pt", lambda c: c.inference.model_uri),
    "inference_confidence_threshold": (0.45, lambda c: c.inference.confidence_threshold),
    "isSSLEnabled": (True, lambda c: c.inference.embedding.ssl.enabled),
    "maxSSLepochs": (7, lambda c: c.inference.embedding.ssl.max_epochs),
    "proportionSamples": (0.25, lambda c: c.selection.proportion_samples),
    "balance": ({"car": 0.5, "person": 0.5}, lambda c: c.selection.balance),
    "balance_strategy": ("TARGET", lambda c: c.selection.balance_strategy),
}


def test_every_book_key_has_a_case():
    assert set(BOOK_CASES) == set(BOOK_KEYS)


@pytest.mark.parametrize("book_key", sorted(BOOK_CASES))
def test_each_book_key_is_read_on_its_own(book_key):
    value, read = BOOK_CASES[book_key]
    cfg = parse_config({book_key: value})
    assert read(cfg) == value
    # and nothing else moved away from the defaults
    defaults = parse_config({}).model_dump()
    changed = {k for k, v in cfg.model_dump().items() if defaults[k] != v}
    assert changed == {BOOK_KEYS[book_key].split(".")[0]}


def test_book_keys_together_with_nested_sections():
    cfg = parse_config(
        {
            "model_path_in_s3": "s3://m/best.pt",
            "important_classes": ["person", "car"],
            "inference": {"batch_size": 8},
            "balance_strategy": "uniform",
            "proportionSamples": 0.1,
        }
    )
    assert cfg.inference.model_uri == "s3://m/best.pt" and cfg.inference.batch_size == 8
    assert cfg.important_classes == ["person", "car"]
    assert cfg.selection.balance_strategy == "UNIFORM"
    assert cfg.selection.proportion_samples == 0.1


def test_conflicting_book_and_nested_keys_fail(tmp_path):
    path = write(tmp_path, {"model_path_in_s3": "a.pt", "inference": {"model_uri": "b.pt"}})
    with pytest.raises(ConfigError, match=r"pipeline.yaml: 'model_path_in_s3'.*'inference.model_uri'"):
        load_config(path)


def test_unknown_key_names_file_and_key_and_suggests(tmp_path):
    path = write(tmp_path, {"extraction": {"sampeling": "fps"}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert (
        str(path) in msg and "extraction.sampeling: unknown key" in msg and "did you mean 'sampling'" in msg
    )


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="proportion_sample: unknown key"):
        load_config(write(tmp_path, {"proportion_sample": 0.1}))


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, {"extraction": {"fps": "fast"}})
    with pytest.raises(ConfigError, match=r"pipeline.yaml: extraction.fps: .*number.*'fast'"):
        load_config(path)


def test_wrong_type_on_book_key_names_the_book_key():
    with pytest.raises(
        ConfigError, match=r"inference_confidence_threshold \(= inference.confidence_threshold\)"
    ):
        parse_config({"inference_confidence_threshold": 3})


def test_both_budgets_rejected():
    with pytest.raises(ConfigError, match="exactly one of n_samples or proportion_samples"):
        parse_config({"selection": {"n_samples": 10, "proportion_samples": 0.1}})


def test_sqs_mode_needs_a_queue(monkeypatch):
    monkeypatch.delenv("FRAMESIFT_SQS_QUEUE_URL", raising=False)
    with pytest.raises(ConfigError, match="sqs_queue_url"):
        parse_config({"discovery": {"mode": "sqs"}})
    assert parse_config({"discovery": {"mode": "sqs", "sqs_queue_url": "http://q"}}).discovery.mode == "sqs"


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["a"], "x.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_env_var_selects_file_and_overrides_merge(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMESIFT_CONFIG", str(write(tmp_path, {"extraction": {"fps": 2}})))
    cfg = load_config(overrides={"extraction": {"every_n": 5}})
    assert cfg.extraction.fps == 2 and cfg.extraction.every_n == 5


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path).storage.videos_prefix == "videos/"


def test_selection_budget_defaults_to_a_proportion_unless_given():
    assert parse_config({}).selection.proportion_samples == 0.1
    sel = parse_config({"selection": {"n_samples": 40}}).selection
    assert sel.n_samples == 40 and sel.proportion_samples is None
    assert parse_config({"proportionSamples": 0.3}).selection.proportion_samples == 0.3
