"""ServiceConfig: defaults, YAML < env < flags precedence, validation messages, docs coverage."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pixforge.service.config import (
    ServiceConfig,
    available_cpus,
    build_config,
    config_from_args,
    config_keys,
    config_to_dict,
    env_name,
    load_config,
    unknown_env,
)
from pixforge.service.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults():
    cfg = load_config(env={})
    assert cfg.port == 50051 and cfg.host == "0.0.0.0"
    assert cfg.limits.max_message_bytes == 64 * 1024 * 1024
    assert cfg.limits.max_output_pixels == 64_000_000
    assert cfg.engine.providers == ("cuda", "cpu")  # TensorRT is opt-in
    assert cfg.engine.cudnn_conv_algo_search == "HEURISTIC"
    assert cfg.colorization.render_size == 512
    assert not cfg.auth.enabled and not cfg.tls.enabled
    assert isinstance(cfg, ServiceConfig)


def test_yaml_env_flags_precedence(tmp_path):
    yaml_file = tmp_path / "server.yaml"
    yaml_file.write_text(
        "port: 6000\nbatching:\n  max_batch_size: 4\n  max_queue_delay_ms: 7\n"
        "engine:\n  providers: [tensorrt, cuda, cpu]\n"
        "pins:\n  sr: 2\n"
    )
    env = {
        "PIXFORGE_BATCHING_MAX_BATCH_SIZE": "16",
        "PIXFORGE_PORT": "6001",
        "PIXFORGE_UNRELATED": "x",
        "PIXFORGE_ENGINE_ALLOW_SPINNING": "yes",
    }
    cfg = load_config(yaml_file, overrides={"port": 6002, "host": None}, env=env)
    assert cfg.port == 6002  # flag beats env beats YAML
    assert cfg.batching.max_batch_size == 16  # env beats YAML
    assert cfg.batching.max_queue_delay_ms == 7.0  # YAML beats default
    assert cfg.engine.providers == ("tensorrt", "cuda", "cpu")
    assert cfg.engine.allow_spinning is True
    assert cfg.pins == {"sr": 2}
    assert cfg.host == "0.0.0.0"  # None flags are ignored


def test_cli_args_and_token_aliases(tmp_path):
    token_file = tmp_path / "tok"
    token_file.write_text("a\n\nb\n")
    args = argparse.Namespace(
        config=None, models=str(tmp_path), port=7000, host="127.0.0.1", metrics_port=0, poll=2.5
    )
    cfg = config_from_args(args, env={"PIXFORGE_TOKEN": "t0", "PIXFORGE_TOKEN_FILE": str(token_file)})
    assert (cfg.port, cfg.host, cfg.metrics_port, cfg.poll_seconds) == (7000, "127.0.0.1", 0, 2.5)
    assert cfg.repository == tmp_path
    assert cfg.auth.tokens == ("t0", "a", "b") and cfg.auth.enabled
    resolved = config_to_dict(cfg)
    assert resolved["auth"]["token"] == "***" and "t0" not in str(resolved)
    assert "t0" not in repr(cfg)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"port": 70000}, "port"),
        ({"batching.max_batch_size": 0}, "batching.max_batch_size"),
        ({"batching.max_batch_size": "many"}, "batching.max_batch_size"),
        ({"engine.providers": ["cuda", "rocm"]}, "rocm"),
        ({"engine.cudnn_conv_algo_search": "DEFAULT"}, "DEFAULT"),
        ({"engine.cudnn_conv_algo_search": "EXHAUSTIVE", "batching.shape_bucket": 0}, "shape_bucket"),
        ({"tls.cert_file": "/nonexistent.pem", "tls.key_file": "/nonexistent.key"}, "tls.cert_file"),
        ({"tls.cert_file": "x"}, "tls.key_file"),
        ({"auth.token_file": "/nonexistent/tokens"}, "auth.token_file"),
        ({"log_format": "xml"}, "log_format"),
        ({"tiling.tile_size": 4}, "tiling.tile_size"),
        ({"stream.max_unsent_bytes": -1}, "stream.max_unsent_bytes"),
        ({"no_such_key": 1}, "no_such_key"),
    ],
)
def test_validation_names_the_key(values, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        build_config(values)


def test_openvino_is_an_opt_in_provider():
    assert load_config(env={}).engine.providers == ("cuda", "cpu")  # not in the default
    cfg = load_config(env={"PIXFORGE_ENGINE_PROVIDERS": "OpenVINO,cpu"})
    assert cfg.engine.providers == ("openvino", "cpu")
    with pytest.raises(ConfigError, match="unknown provider 'openvin'.*tensorrt, cuda, openvino, cpu"):
        build_config({"engine.providers": ["openvin", "cpu"]})


def test_yaml_errors_name_file_and_key(tmp_path):
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("batching:\n  max_batch: 3\n")
    with pytest.raises(ConfigError, match="batching.max_batch.*valid batching keys"):
        load_config(bad_key, env={})
    bad_yaml = tmp_path / "b.yaml"
    bad_yaml.write_text("port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad_yaml, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    binary = tmp_path / "c.png"  # an image passed as --config by mistake
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(binary, env={})


def test_env_names():
    assert env_name("batching.max_batch_size") == "PIXFORGE_BATCHING_MAX_BATCH_SIZE"
    assert env_name("port") == "PIXFORGE_PORT"
    assert env_name("models") == "PIXFORGE_MODELS"  # same variable pixforge.repository reads


def test_every_key_is_documented():
    doc = (ROOT / "docs" / "serving.md").read_text()
    keys = config_keys()
    assert len(keys) > 30
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"keys missing from docs/serving.md: {missing}"
    assert all(keys.values()), "every config field needs a doc string"


def test_available_cpus_is_positive():
    assert available_cpus() >= 1


def test_misspelt_environment_variables_are_named():
    env = {
        "PIXFORGE_BATCHING_MAX_BATCH": "4",  # misspelt: the server would silently keep the default
        "PIXFORGE_PORT": "50051",  # a setting
        "PIXFORGE_TOKEN": "x",  # an alias
        "PIXFORGE_IMAGE": "pixforge:cpu",  # docker-compose's, not the server's
        "HOME": "/root",
    }
    lines = unknown_env(env)
    assert len(lines) == 1
    assert "PIXFORGE_BATCHING_MAX_BATCH " in lines[0]
    assert "did you mean 'PIXFORGE_BATCHING_MAX_BATCH_SIZE'" in lines[0]
