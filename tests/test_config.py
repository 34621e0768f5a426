"""The TOML configuration: schema, precedence, error messages, the sample file, ``tvixd config``."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_tvixd, tvixd_env
from tvixd import config
from tvixd.cli.common import store_addrs
from tvixd.store import StateDirError, ensure_state_dir

# Three distinct valid values per key: (file, env, flag). The env form is the text of the variable.
SAMPLES = {
    "daemon.listen_address": (["localhost:1"], "localhost:2,unix:/run/x.sock", ["[::1]:3"]),
    "daemon.workers": (2, "3", 4),
    "daemon.processes": (2, "3", 4),
    "daemon.shutdown_grace": (1.5, "2.5", 3.5),
    "daemon.tls_cert": ("/f/cert", "/e/cert", "/a/cert"),
    "daemon.tls_key": ("/f/key", "/e/key", "/a/key"),
    "daemon.max_message_size": (2048, "4096", 8192),
    "store.blob_service_addr": ("memory://", "fs:///e/blobs", "fs:///a/blobs"),
    "store.directory_service_addr": ("memory://", "sqlite:///e/db", "sqlite:///a/db"),
    "store.path_info_service_addr": ("memory://", "sqlite:///e/db", "sqlite:///a/db"),
    "store.state_dir": ("/f/state", "/e/state", "/a/state"),
    "log.format": ("console", "json", "auto"),
    "log.level": ("debug", "warning", "error"),
    "log.access_log": (True, "no", True),
    "limits.max_concurrent_rpcs": (10, "20", 30),
    "metrics.listen_address": ("localhost:9101", "127.0.0.1:9102", "[::1]:9103"),
    "metrics.store_stats_interval": (5.0, "0", 120.0),
    "binary_cache.listen_address": ("localhost:9001", "localhost:9002", "localhost:9003"),
    "binary_cache.signing_key": (["/f/k1", "/f/k2"], "/e/k1,/e/k2", ["/a/k"]),
    "binary_cache.priority": (10, "20", 30),
    "mount.list_root": (True, "0", True),
    "mount.allow_other": (True, "false", True),
    "mount.show_xattr": (True, "off", True),
}
ENV_EXPECTED = {"daemon.listen_address": ["localhost:2", "unix:/run/x.sock"], "log.access_log": False,
                "binary_cache.signing_key": ["/e/k1", "/e/k2"], "mount.list_root": False,
                "mount.allow_other": False, "mount.show_xattr": False}
COMMAND = {"daemon": "daemon", "limits": "daemon", "binary_cache": "binary-cache", "mount": "mount"}


def write_toml(path: Path, values: dict[str, object]) -> Path:
    """Write ``{"section.key": value}`` as a TOML file."""
    sections: dict[str, list[str]] = {}
    for dotted, value in values.items():
        section, name = dotted.split(".")
        sections.setdefault(section, []).append(f"{name} = {config.toml_value(value)}")
    path.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    return path


def env_without_config() -> dict[str, str]:
    """The environment minus anything that configures tvixd (tests must not see the caller's config)."""
    specs = {s.env for s in config.schema()} | {config.CONFIG_ENV}
    return {k: v for k, v in os.environ.items() if k not in specs}


def test_samples_cover_the_schema():
    assert set(SAMPLES) == {s.dotted for s in config.schema()}


@pytest.mark.parametrize("spec", config.schema(), ids=lambda s: s.dotted)
def test_precedence_flag_env_file_default(spec: config.KeySpec, tmp_path: Path):
    """For every key: the flag beats the env var, which beats the file, which beats the default."""
    file_v, env_v, flag_v = SAMPLES[spec.dotted]
    other = {"daemon.tls_cert": "daemon.tls_key", "daemon.tls_key": "daemon.tls_cert"}.get(spec.dotted)
    file_values = {spec.dotted: file_v}
    if other:  # TLS needs both halves; keep the partner set in the file
        file_values[other] = SAMPLES[other][0]
    path = write_toml(tmp_path / "t.toml", file_values)
    args = argparse.Namespace(command=COMMAND.get(spec.section, "import"), config=str(path), **{spec.dest: flag_v})
    env = {spec.env: env_v}
    if other:
        env[config.schema_by_dotted()[other].env] = SAMPLES[other][1]
        setattr(args, config.schema_by_dotted()[other].dest, SAMPLES[other][2])

    cfg = config.load(args, environ=env)
    assert cfg.get(spec.dotted) == flag_v and cfg.source(spec.dotted) == f"flag {spec.flag}"

    setattr(args, spec.dest, None)
    cfg = config.load(args, environ=env)
    assert cfg.get(spec.dotted) == ENV_EXPECTED.get(spec.dotted, type(flag_v)(env_v) if not isinstance(
        flag_v, list) else env_v)
    assert cfg.source(spec.dotted) == f"env {spec.env}"

    del env[spec.env]
    cfg = config.load(args, environ=env)
    assert cfg.get(spec.dotted) == file_v
    line = path.read_text().splitlines().index(f"{spec.name} = {config.toml_value(file_v)}") + 1
    assert cfg.source(spec.dotted) == f"file {path}:{line}"

    args.config = None
    if other:
        setattr(args, config.schema_by_dotted()[other].dest, None)
        env.clear()
    cfg = config.load(args, environ=env, path=None) if not os.path.exists(config.SYSTEM_CONFIG) else None
    if cfg is not None:
        assert cfg.get(spec.dotted) == spec.default and cfg.source(spec.dotted) == "default"


def test_command_owned_flags_stay_in_their_section(tmp_path: Path):
    """``binary-cache --listen-address`` must not change [daemon] listen_address, and vice versa."""
    args = argparse.Namespace(command="binary-cache", config=None, listen_address="localhost:9999")
    cfg = config.load(args, environ={})
    assert cfg.binary_cache.listen_address == "localhost:9999"
    assert cfg.daemon.listen_address == ["localhost:8000"]
    args = argparse.Namespace(command="daemon", config=None, listen_address=["localhost:7777"])
    cfg = config.load(args, environ={})
    assert cfg.daemon.listen_address == ["localhost:7777"] and cfg.binary_cache.listen_address == "localhost:9000"


def test_absent_store_true_flag_does_not_override(tmp_path: Path):
    """``tvixd mount`` declares --list-root with action=store_true (False when absent): the file still counts."""
    path = write_toml(tmp_path / "t.toml", {"mount.list_root": True})
    cfg = config.load(argparse.Namespace(command="mount", config=str(path), list_root=False), environ={})
    assert cfg.mount.list_root is True and cfg.source("mount.list_root").startswith("file ")


def test_file_lookup_order(tmp_path: Path):
    a = write_toml(tmp_path / "a.toml", {"daemon.workers": 5})
    b = write_toml(tmp_path / "b.toml", {"daemon.workers": 6})
    cfg = config.load(argparse.Namespace(config=str(a)), environ={config.CONFIG_ENV: str(b)})
    assert (cfg.file, cfg.file_source, cfg.daemon.workers) == (str(a), "--config", 5)
    cfg = config.load(argparse.Namespace(config=None), environ={config.CONFIG_ENV: str(b)})
    assert (cfg.file, cfg.file_source, cfg.daemon.workers) == (str(b), "$TVIXD_CONFIG", 6)


def test_one_string_or_a_list(tmp_path: Path):
    path = tmp_path / "t.toml"
    path.write_text('[daemon]\nlisten_address = "unix:///run/tvixd.sock"\n[binary_cache]\nsigning_key = "/k"\n')
    cfg = config.load(None, environ={}, path=path)
    assert cfg.daemon.listen_address == ["unix:///run/tvixd.sock"] and cfg.binary_cache.signing_key == ["/k"]


def test_sample_config_documents_every_key():
    """conf/tvixd.toml loads as is, and with its commented assignments enabled covers every key."""
    sample = REPO_ROOT / "conf" / "tvixd.toml"
    assert config.load(None, environ={}, path=sample).file == str(sample)
    enabled: list[str] = []
    seen: set[str] = set()
    section = None
    for line in sample.read_text().splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m[1]
            enabled.append(line)
        elif m := re.match(r"^# (\w+) = (.*)$", line):
            if f"{section}.{m[1]}" in seen:
                continue  # a second example of the same key
            seen.add(f"{section}.{m[1]}")
            enabled.append(f"{m[1]} = {m[2]}")
    doc = tomllib.loads("\n".join(enabled))
    keys = {f"{s}.{k}" for s, t in doc.items() for k in t}
    assert keys == {s.dotted for s in config.schema()}
    for spec in config.schema():  # the sample shows the real default wherever there is one
        if spec.default not in (None, []):
            section, name = spec.dotted.split(".")
            assert config._coerce_toml(spec, doc[section][name]) == spec.default, spec.dotted


BAD_FILES = [
    ("[daemon]\nworkers = 4\nlisten_adress = 'x'\n", r"t\.toml:3: unknown key 'listen_adress' in \[daemon\] "
     r"\(did you mean listen_address\?\)"),
    ("[deamon]\nworkers = 4\n", r"t\.toml:1: unknown section \[deamon\] \(did you mean \[daemon\]\?\)"),
    ("workers = 4\n", r"t\.toml:1: unknown top-level key 'workers'"),
    ("[log]\nlevel = 'info'\n\n[daemon]\nworkers = '4'\n", r"t\.toml:5: \[daemon\] workers: expected an integer, "
     r"got string '4'"),
    ("[daemon]\nworkers = true\n", r"t\.toml:2: \[daemon\] workers: expected an integer, got boolean True"),
    ("[daemon]\nlisten_address = [1]\n", r"t\.toml:2: \[daemon\] listen_address: expected a string or an array "
     r"of strings"),
    ("[mount]\nlist_root = 'yes'\n", r"t\.toml:2: \[mount\] list_root: expected a boolean"),
    ("[daemon]\nworkers = 4\n[log\n", r"t\.toml:3:5: invalid TOML: Expected '\]'"),
    ("[daemon]\nworkers = \n", r"t\.toml:2:\d+: invalid TOML: "),
    ("[daemon]\nworkers = 0\n", r"t\.toml:2: \[daemon\] workers: expected a value >= 1, got 0"),
    ("[log]\nformat = 'xml'\n", r"t\.toml:2: \[log\] format: expected one of json, console, auto, got 'xml'"),
    ("[daemon]\nlisten_address = 'localhost'\n", r"t\.toml:2: \[daemon\] listen_address: expected host:port"),
    ("[metrics]\nlisten_address = 'unix:/x'\n", r"t\.toml:2: \[metrics\] listen_address: expected host:port"),
    ("[daemon]\ntls_key = '/k'\n", r"t\.toml:2: \[daemon\] tls_key is set but tls_cert is not"),
    ("daemon = 3\n", r"t\.toml:1: 'daemon' must be a \[daemon\] table"),
    (b"[daemon]\nworkers = 4 # \xff\n", r"t\.toml: not UTF-8"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES, ids=range(len(BAD_FILES)))
def test_bad_file_is_one_line_error(text: str | bytes, expected: str, tmp_path: Path):
    """Through the real CLI: non-zero exit, exactly one line naming file, line or key, and what was wanted."""
    path = tmp_path / "t.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    for argv in (["--config", str(path), "config", "check"], ["--config", str(path), "config", "show"]):
        r = run_tvixd(*argv, env=tvixd_env(**env_without_config()))
        err = r.stderr.decode()
        assert r.returncode != 0 and r.stdout == b""
        assert len(err.splitlines()) == 1, err
        assert re.search(expected, err), err


def test_bad_config_stops_any_command(tmp_path: Path):
    """A broken file stops commands that resolve the configuration in ``main`` too (here: import)."""
    path = tmp_path / "t.toml"
    path.write_text("[daemon]\nworkers = 'many'\n")
    env = tvixd_env(**env_without_config(), TVIXD_CONFIG=str(path))
    sub = [m for m in ("daemon", "import") if run_tvixd(m, "--help", env=tvixd_env()).returncode == 0]
    if not sub:
        pytest.skip("no subcommand that resolves the configuration has landed yet")
    r = run_tvixd(sub[0], env=env)
    err = r.stderr.decode()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"{path}:2: [daemon] workers: expected an integer" in err and "Traceback" not in err


@pytest.mark.parametrize(("env", "expected"), [
    ({"TVIXD_DAEMON_WORKERS": "x"}, "environment variable TVIXD_DAEMON_WORKERS (daemon.workers): expected an integer"),
    ({"TVIXD_MOUNT_LIST_ROOT": "maybe"}, "environment variable TVIXD_MOUNT_LIST_ROOT (mount.list_root): expected one"),
    ({"TVIXD_LOG_LEVEL": "loud"}, "environment variable TVIXD_LOG_LEVEL: [log] level: expected one of"),
    ({"TVIXD_CONFIG": "/nonexistent/tvixd.toml"}, "config file /nonexistent/tvixd.toml: cannot read: No such file"),
])
def test_bad_environment_is_one_line_error(env: dict[str, str], expected: str):
    r = run_tvixd("config", "show", env=tvixd_env(**env_without_config(), **env))
    err = r.stderr.decode()
    assert r.returncode != 0 and len(err.splitlines()) == 1 and expected in err, err


def test_missing_config_flag_file(tmp_path: Path):
    r = run_tvixd("--config", str(tmp_path / "nope.toml"), "config", "check", env=tvixd_env(**env_without_config()))
    err = r.stderr.decode()
    assert r.returncode != 0 and len(err.splitlines()) == 1 and f"{tmp_path / 'nope.toml'}: cannot read" in err


def test_config_show_reports_sources(tmp_path: Path):
    path = write_toml(tmp_path / "t.toml", {"log.level": "debug", "daemon.workers": 3, "metrics.listen_address":
                                            "localhost:9100"})
    env = tvixd_env(**env_without_config(), TVIXD_CONFIG=str(path), TVIXD_DAEMON_WORKERS="7")
    r = run_tvixd("--log-level", "error", "config", "show", "--json", env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["file"] == str(path) and shown["file_source"] == "$TVIXD_CONFIG"
    values = shown["values"]
    assert values["log"]["level"] == {"value": "error", "source": "flag --log-level", "env": "TVIXD_LOG_LEVEL"}
    assert values["daemon"]["workers"]["value"] == 7
    assert values["daemon"]["workers"]["source"] == "env TVIXD_DAEMON_WORKERS"
    assert values["metrics"]["listen_address"] == {"value": "localhost:9100", "source": f"file {path}:6",
                                                   "env": "TVIXD_METRICS_LISTEN_ADDRESS"}
    assert values["daemon"]["shutdown_grace"]["source"] == "default"

    r = run_tvixd("--log-level", "error", "config", "show", env=env)
    text = r.stdout.decode()
    assert re.search(r"^level = \"error\" +# flag --log-level$", text, re.M), text
    assert re.search(r"^workers = 7 +# env TVIXD_DAEMON_WORKERS$", text, re.M), text
    # The text form is itself a valid config: feeding it back gives the same values.
    again = tmp_path / "again.toml"
    again.write_text(text)
    reread = config.load(None, environ={}, path=again)
    assert reread.daemon.workers == 7 and reread.log.level == "error"


def test_config_check_ok(tmp_path: Path):
    path = write_toml(tmp_path / "t.toml", {"daemon.workers": 3})
    r = run_tvixd("config", "check", str(path), env=tvixd_env(**env_without_config()))
    assert r.returncode == 0 and r.stdout.decode() == f"{path}: ok\n" and r.stderr == b""


def test_store_addrs_precedence(tmp_path: Path):
    """common.store_addrs: flag > env > file > the command's default (embedded store in state_dir)."""
    state = tmp_path / "state"
    path = write_toml(tmp_path / "t.toml", {"store.blob_service_addr": "memory://", "store.state_dir": str(state)})
    args = argparse.Namespace(command="import", config=str(path), blob_service_addr=None,
                              directory_service_addr="memory://", path_info_service_addr=None, store_defaults=None)
    args.cfg = config.load(args, environ={"PATH_INFO_SERVICE_ADDR": "sqlite:///env/db"})
    addrs = store_addrs(args)
    assert (addrs.blob, addrs.directory, addrs.path_info) == ("memory://", "memory://", "sqlite:///env/db")
    assert not state.exists()  # nothing embedded was needed
    args.directory_service_addr = None
    args.cfg = config.load(args, environ={})
    addrs = store_addrs(args)
    assert addrs.directory == f"sqlite://{state / 'store.sqlite'}" and addrs.blob == "memory://"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_state_dir_created_private(tmp_path: Path):
    target = tmp_path / "a" / "b" / "tvixd"
    assert ensure_state_dir(target) == target
    assert target.is_dir() and stat.S_IMODE(target.stat().st_mode) == 0o700
    assert list(target.iterdir()) == []  # the write probe leaves nothing behind


def test_unusable_state_dir_is_one_line_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateDirError) as e:
        ensure_state_dir(blocker / "tvixd")
    msg = str(e.value)
    assert "\n" not in msg and f"state directory {blocker / 'tvixd'} is not usable: Not a directory" in msg
    if os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(StateDirError, match="Permission denied"):
            ensure_state_dir(ro)


def test_listen_address_forms():
    assert config.parse_listen_address("localhost:8000") == ("tcp", "localhost", 8000)
    assert config.parse_listen_address("[::]:8000") == ("tcp", "::", 8000)
    assert config.parse_listen_address("0.0.0.0:0") == ("tcp", "0.0.0.0", 0)
    assert config.parse_listen_address("unix:/run/t.sock") == ("unix", "/run/t.sock", 0)
    assert config.parse_listen_address("unix:///run/t.sock") == ("unix", "/run/t.sock", 0)
    for bad in ("localhost", ":8000", "host:99999", "unix:rel.sock", "[::1]8000", "a b:1"):
        with pytest.raises(ValueError, match=r"expected|port must be"):
            config.parse_listen_address(bad)
    with pytest.raises(ValueError, match="unix socket is not supported"):
        config.parse_listen_address("unix:/x", unix=False)


def test_defaults_are_fresh_per_config():
    """Each Config gets its own sections and list defaults: changing one load's list leaves the next alone."""
    first = config.load(None, environ={}, path=None) if not os.path.exists(config.SYSTEM_CONFIG) else None
    if first is None:
        pytest.skip(f"{config.SYSTEM_CONFIG} exists on this machine")
    first.daemon.listen_address.append("127.0.0.1:1")
    second = config.load(None, environ={}, path=None)
    assert second.daemon.listen_address == ["localhost:8000"] and second.daemon != first.daemon
    assert second.binary_cache.signing_key == [] and config.schema_by_dotted()["daemon.listen_address"].default == [
        "localhost:8000"]
    assert "listen_address=['localhost:8000']" in repr(second.daemon)
