"""The TOML configuration: one typed schema, four sources, and where each value came from.

Every key lives in a section (``[daemon]``, ``[store]``, ...) and is resolved, key by key, from
the first source that sets it: the command-line flag, its environment variable, the config file,
the built-in default. The file is ``--config FILE``, else ``$TVIXD_CONFIG``, else
``/etc/tvixd/tvixd.toml`` if it exists, else none. Problems (broken TOML, an unknown key, a value
of the wrong type) raise :class:`ConfigError` with a one-line message naming the file, the line
or key, and what was expected; the CLI prints it and exits non-zero.

The schema is the section classes below: each key is a class attribute made by :func:`key`
(its built-in default, help text, environment variable and the argparse ``dest`` of the flag
that overrides it), annotated with its type. Adding a key is adding one attribute.
``conf/tvixd.toml`` documents every key (a test keeps it complete).

Every command loads the configuration at start-up, so this module stays cheap to import: plain
classes rather than dataclasses (``dataclasses`` imports ``inspect``: 12-17 ms, and generating
the classes' methods cost ~7 ms more), paths as ``str`` rather than ``pathlib`` (~5 ms).
"""

# No ``from __future__ import annotations`` here: schema() reads each key's type from the section's
# annotations, and string annotations made typing compile each of them again at every start-up (~1 ms).
import functools
import os
import re
import types
import typing
from typing import Any

from tvixd.errors import TvixError

SYSTEM_CONFIG = "/etc/tvixd/tvixd.toml"
CONFIG_ENV = "TVIXD_CONFIG"

# Sections whose flags belong to one subcommand: ``--listen-address`` of ``binary-cache`` must not
# land in [daemon]. The other sections take their flags from any subcommand that defines them.
SECTION_COMMANDS = {"daemon": "daemon", "limits": "daemon", "binary_cache": "binary-cache", "mount": "mount"}

LOG_LEVELS = ("error", "warning", "warn", "info", "debug", "trace")
LOG_FORMATS = ("json", "console", "auto")


class ConfigError(TvixError):
    """The configuration is unusable; the message is one line naming the file, line or key."""


class _Key:
    """A key as declared in a section class (what :func:`key` returns); :func:`schema` completes it."""

    __slots__ = ("check", "default", "dest", "env", "help", "one_or_many")

    def __init__(self, default: Any, help: str, env: str | None, dest: str | None,
                 check: typing.Callable[[Any], str | None] | None, one_or_many: bool) -> None:
        self.default, self.help, self.env, self.dest = default, help, env, dest
        self.check, self.one_or_many = check, one_or_many


def key(default: Any, help: str, *, env: str | None = None, dest: str | None = None,
        check: typing.Callable[[Any], str | None] | None = None, one_or_many: bool = False) -> Any:
    """A schema key: ``default``, ``help`` text, ``env`` var (default TVIXD_<SECTION>_<KEY>),
    the argparse ``dest`` of its flag (default: the key's name), a semantic ``check`` returning an
    error text or None, and ``one_or_many`` for a list that may also be written as one string."""
    return _Key(default, help, env, dest, check, one_or_many)


def _declared_keys(cls: type) -> dict[str, _Key]:
    """The keys a section class declares, in declaration order."""
    return {name: value for name, value in vars(cls).items() if isinstance(value, _Key)}


class _Section:
    """A section of the configuration: one attribute per key, set to its default (a fresh list for lists)."""

    def __init__(self) -> None:
        for name, k in _declared_keys(type(self)).items():
            setattr(self, name, list(k.default) if isinstance(k.default, list) else k.default)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


# --- semantic checks (return an error text, or None when fine) --------------------------------

# Patterns as text, compiled by ``re`` (and cached there) on first use: compiling them at import was ~1-2 ms
# of the start-up of every command, which rarely needs either.
_HOSTPORT = r"^(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d+)$"


def parse_listen_address(addr: str, *, unix: bool = True) -> tuple[str, str, int]:
    """Split a listen address into ``(kind, host_or_path, port)``; kind is ``tcp`` or ``unix``.

    Accepted: ``host:port``, ``IPv4:port``, ``[IPv6]:port`` and (when ``unix``) ``unix:/abs/path``
    or ``unix:///abs/path``. Raises ValueError saying what was expected.
    """
    if addr.startswith("unix:"):
        if not unix:
            raise ValueError(f"expected host:port (a unix socket is not supported here), got {addr!r}")
        path = addr[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {addr!r}")
        return "unix", path, 0
    m = re.match(_HOSTPORT, addr)
    if not m:
        expected = "host:port, [ipv6]:port" + (" or unix:/path" if unix else "")
        raise ValueError(f"expected {expected}, got {addr!r}")
    port = int(m["port"])
    if port > 65535:
        raise ValueError(f"port must be 0..65535, got {addr!r}")
    return "tcp", m["v6"] if m["v6"] is not None else m["host"], port


def _listen_check(unix: bool) -> typing.Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            return "expected at least one address"
        for v in values:
            if v is None:
                continue
            try:
                parse_listen_address(v, unix=unix)
            except ValueError as e:
                return str(e)
        return None

    return check


def _at_least(n: int | float) -> typing.Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= n else f"expected a value >= {n}, got {v!r}"


def _one_of(choices: tuple[str, ...]) -> typing.Callable[[Any], str | None]:
    return lambda v: None if v.lower() in choices else f"expected one of {', '.join(choices)}, got {v!r}"


def _absolute(v: Any) -> str | None:
    return None if v is None or v.startswith("/") else f"expected an absolute path, got {v!r}"


# --- the schema --------------------------------------------------------------------------------


class DaemonSection(_Section):
    """``tvixd daemon``: where it listens and how it serves."""

    listen_address: list[str] = key(
        ["localhost:8000"], "addresses to listen on: host:port, [ipv6]:port or unix:/path; one string or a list",
        check=_listen_check(unix=True), one_or_many=True)
    workers: int = key(32, "threads serving RPCs", check=_at_least(1))
    processes: int = key(1, "serving processes sharing the TCP ports (SO_REUSEPORT); > 1 needs TCP addresses, "
                         "shared backends (not memory://) and no metrics endpoint", check=_at_least(1))
    shutdown_grace: float = key(10.0, "seconds in-flight calls get to finish on SIGTERM/SIGINT", check=_at_least(0))
    tls_cert: str | None = key(None, "PEM certificate chain; with tls_key, serve TLS (clients use grpc+https://)",
                               check=_absolute)
    tls_key: str | None = key(None, "PEM private key for tls_cert", check=_absolute)
    max_message_size: int = key(64 * 1024 * 1024, "largest gRPC message accepted or sent, in bytes",
                                check=_at_least(1024))


class StoreSection(_Section):
    """The three service addresses; unset means the command's default (daemon: the embedded store
    under ``state_dir``; client commands: the daemon at grpc+http://[::1]:8000)."""

    blob_service_addr: str | None = key(None, "blob service URL: fs:///abs/dir, memory://, grpc+http://host:port, ...",
                                        env="BLOB_SERVICE_ADDR")
    directory_service_addr: str | None = key(None, "directory service URL: sqlite:///abs/file, memory://, grpc+...",
                                             env="DIRECTORY_SERVICE_ADDR")
    path_info_service_addr: str | None = key(None, "path info service URL: sqlite:///abs/file, memory://, grpc+...",
                                             env="PATH_INFO_SERVICE_ADDR")
    state_dir: str | None = key(
        None, "directory of the embedded store; default $STATE_DIRECTORY (systemd), /var/lib/tvixd for root, "
        "else $XDG_DATA_HOME/tvixd", env="TVIXD_STATE_DIR", check=_absolute)


class LogSection(_Section):
    """Logs: always on stderr, one event per line."""

    format: str = key("auto", "json, console, or auto (console on a terminal, else json)", dest="log_format",
                      check=_one_of(LOG_FORMATS))
    level: str = key("info", "error, warning, info or debug", dest="log_level", check=_one_of(LOG_LEVELS))
    access_log: bool = key(True, "log one line per RPC (method, peer, code, duration_ms, bytes, request_id)")


class LimitsSection(_Section):
    """Limits of the daemon (exceeding one is RESOURCE_EXHAUSTED naming it)."""

    max_concurrent_rpcs: int | None = key(None, "RPCs in flight before new ones are refused; unset = no limit",
                                          check=_at_least(1))


class MetricsSection(_Section):
    """The Prometheus endpoint (off unless an address is set)."""

    listen_address: str | None = key(None, "host:port for GET /metrics, e.g. localhost:9100; unset = off",
                                     dest="metrics_listen_address", check=_listen_check(unix=False))
    store_stats_interval: float = key(60.0, "seconds between recomputations of the store gauges (blob count "
                                      "walks the blob directory); 0 = on every scrape", check=_at_least(0))


class BinaryCacheSection(_Section):
    """``tvixd binary-cache``: the store as a Nix HTTP binary cache."""

    listen_address: str = key("localhost:9000", "host:port to serve HTTP on", check=_listen_check(unix=False))
    signing_key: list[str] = key(
        [], "secret key files (nix-store --generate-binary-cache-key format)", one_or_many=True)
    priority: int = key(50, "Priority: in /nix-cache-info (lower is preferred by Nix)", check=_at_least(0))


class MountSection(_Section):
    """``tvixd mount``: the store as a read-only FUSE filesystem."""

    list_root: bool = key(False, "allow listing the mount root (every store path)")
    allow_other: bool = key(False, "let users other than the mounting one read the mount")
    show_xattr: bool = key(False, "expose blake3 digests as extended attributes")


SECTIONS: dict[str, type[_Section]] = {
    "daemon": DaemonSection,
    "store": StoreSection,
    "log": LogSection,
    "limits": LimitsSection,
    "metrics": MetricsSection,
    "binary_cache": BinaryCacheSection,
    "mount": MountSection,
}


class KeySpec(typing.NamedTuple):
    """One key of the schema, with everything needed to resolve and document it."""

    section: str
    name: str
    type: Any
    default: Any
    help: str
    env: str
    dest: str
    check: typing.Callable[[Any], str | None] | None
    one_or_many: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


@functools.cache
def schema() -> tuple[KeySpec, ...]:
    """Every key of every section, in documentation order."""
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for name, k in _declared_keys(cls).items():
            out.append(KeySpec(section, name, hints[name], k.default, k.help,
                               k.env or f"TVIXD_{section}_{name}".upper(), k.dest or name, k.check, k.one_or_many))
    return tuple(out)


def schema_by_dotted() -> dict[str, KeySpec]:
    """The schema keyed by ``"section.key"``."""
    return {s.dotted: s for s in schema()}


class Config:
    """The effective configuration: one attribute per section, plus where each value came from."""

    daemon: DaemonSection
    store: StoreSection
    log: LogSection
    limits: LimitsSection
    metrics: MetricsSection
    binary_cache: BinaryCacheSection
    mount: MountSection

    def __init__(self, file: str | None = None, file_source: str = "none") -> None:
        for section, cls in SECTIONS.items():
            setattr(self, section, cls())
        self.file = file
        """The file that was read, or None (built-in defaults)."""
        self.file_source = file_source
        """How the file was chosen: ``--config``, ``$TVIXD_CONFIG``, ``system``, ``argument`` or ``none``."""
        self.sources: dict[str, str] = {}
        """``"section.key"`` -> ``"flag --x"``, ``"env X"``, ``"file PATH:LINE"`` or ``"default"``."""

    def get(self, dotted: str) -> Any:
        """The value of ``"section.key"``."""
        section, name = dotted.split(".", 1)
        return getattr(getattr(self, section), name)

    def source(self, dotted: str) -> str:
        """Where the value of ``"section.key"`` came from."""
        return self.sources.get(dotted, "default")

    def to_dict(self) -> dict[str, Any]:
        """The values and sources as plain JSON-able data (``tvixd config show --json``)."""
        values: dict[str, dict[str, Any]] = {}
        for spec in schema():
            values.setdefault(spec.section, {})[spec.name] = {
                "value": self.get(spec.dotted), "source": self.source(spec.dotted), "env": spec.env}
        return {"file": str(self.file) if self.file else None, "file_source": self.file_source, "values": values}


# --- typing of raw values ------------------------------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true/false)"}


def _describe(value: Any) -> str:
    kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}.get(
        type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} {shown}"


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(type, optional)`` for ``X`` or ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _expected(spec: KeySpec) -> str:
    tp, _ = _base_type(spec.type)
    if typing.get_origin(tp) is list:
        return "a string or an array of strings" if spec.one_or_many else "an array of strings"
    return _TYPE_NAMES[tp]


def _coerce_toml(spec: KeySpec, value: Any) -> Any:
    """Check a value read from TOML against the key's type; ValueError says what was expected."""
    tp, _ = _base_type(spec.type)
    if typing.get_origin(tp) is list:
        if spec.one_or_many and isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ValueError(f"expected {_expected(spec)}, got {_describe(value)}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce_env(spec: KeySpec, raw: str) -> Any:
    """Parse an environment variable's text by the key's type (lists are comma-separated)."""
    tp, _ = _base_type(spec.type)
    if typing.get_origin(tp) is list:
        return [p.strip() for p in raw.split(",") if p.strip()]
    if tp is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"expected one of 1/0/true/false/yes/no/on/off, got {raw!r}")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    return raw


# --- reading the file ----------------------------------------------------------------------------

_HEADER = r"^\s*\[\s*([A-Za-z0-9_\-\"' .]+?)\s*\]\s*(?:#.*)?$"


def _key_line(text: str, section: str | None, name: str | None) -> int | None:
    """Best-effort 1-based line of ``[section]`` (name None) or of ``name = ...`` in it.

    tomllib reports positions only for syntax errors, so unknown keys and type errors are located
    by scanning the (already valid) text for the table header and the key.
    """
    current: str | None = ""
    key_re = re.compile(r"^\s*(?:" + re.escape(name or "") + r"|\"" + re.escape(name or "") + r"\")\s*=")
    for lineno, line in enumerate(text.splitlines(), 1):
        m = re.match(_HEADER, line)
        if m:
            current = m.group(1).strip().strip("\"'")
            if name is None and current == section:
                return lineno
            continue
        if name is not None and current == section and key_re.match(line):
            return lineno
    return None


def _where(path: str, text: str, section: str | None, name: str | None) -> str:
    line = _key_line(text, section, name)
    return f"{path}:{line}" if line else f"{path}"


def read_file(path: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and type-check a config file: ``(values by section, source text by dotted key)``."""
    import difflib  # here, not at the top: start-up time of every command matters
    import tomllib

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib says "... (at line L, column C)"; put the position where editors look for it.
        m = re.match(r"^(.*) \(at line (\d+), column (\d+)\)$", str(e))
        if m:
            raise ConfigError(f"{path}:{m[2]}:{m[3]}: invalid TOML: {m[1]}") from None
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    specs = {(s.section, s.name): s for s in schema()}
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for section, table in doc.items():
        if section not in SECTIONS:
            hint = difflib.get_close_matches(section, SECTIONS, n=1)
            did = f" (did you mean [{hint[0]}]?)" if hint else f" (expected one of: {', '.join(SECTIONS)})"
            where = _where(path, text, section, None)
            if not isinstance(table, dict):
                where = _where(path, text, "", section)
                raise ConfigError(f"{where}: unknown top-level key {section!r}: every key belongs in a "
                                  f"[section]{did}")
            raise ConfigError(f"{where}: unknown section [{section}]{did}")
        if not isinstance(table, dict):
            raise ConfigError(f"{_where(path, text, '', section)}: {section!r} must be a [{section}] table, "
                              f"got {_describe(table)}")
        for name, value in table.items():
            spec = specs.get((section, name))
            if spec is None:
                names = [n for (s, n) in specs if s == section]
                hint = difflib.get_close_matches(name, names, n=1)
                did = f" (did you mean {hint[0]}?)" if hint else f" (known keys: {', '.join(names)})"
                raise ConfigError(f"{_where(path, text, section, name)}: unknown key {name!r} in [{section}]{did}")
            where = _where(path, text, section, name)
            try:
                values.setdefault(section, {})[name] = _coerce_toml(spec, value)
            except ValueError as e:
                raise ConfigError(f"{where}: [{section}] {name}: {e}") from None
            sources[spec.dotted] = f"file {where}"
    return values, sources


def find_file(args: Any = None, environ: typing.Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The config file to read and how it was chosen: --config, else $TVIXD_CONFIG, else the system file."""
    environ = os.environ if environ is None else environ
    explicit = getattr(args, "config", None)
    if explicit:
        return str(explicit), "--config"
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV], f"${CONFIG_ENV}"
    if os.path.isfile(SYSTEM_CONFIG):
        return SYSTEM_CONFIG, "system"
    return None, "none"


def load(args: Any = None, environ: typing.Mapping[str, str] | None = None,
         path: str | os.PathLike[str] | None = None) -> Config:
    """Resolve every key: flag (from ``args``) > environment variable > file > default.

    ``args`` is the parsed argparse namespace (or None); flags are read from the attribute named by
    each key's ``dest`` when it is not None, and for command-owned sections only when
    ``args.command`` is that command. ``path`` overrides the file lookup (``config check FILE``).
    """
    environ = os.environ if environ is None else environ
    if path is not None:
        file, how = os.fspath(path), "argument"
    else:
        file, how = find_file(args, environ)
    file_values, file_sources = read_file(file) if file is not None else ({}, {})
    command = getattr(args, "command", None)
    cfg = Config(file=file, file_source=how)
    for spec in schema():
        # The section's own default: a fresh copy of a list (see _Section), never the schema's object.
        value, source = getattr(getattr(cfg, spec.section), spec.name), "default"
        if spec.section in file_values and spec.name in file_values[spec.section]:
            value, source = file_values[spec.section][spec.name], file_sources[spec.dotted]
        raw_env = environ.get(spec.env)
        if raw_env:  # an empty variable counts as unset, as for the *_SERVICE_ADDR variables
            try:
                value, source = _coerce_env(spec, raw_env), f"env {spec.env}"
            except ValueError as e:
                raise ConfigError(f"environment variable {spec.env} ({spec.dotted}): {e}") from None
        owner = SECTION_COMMANDS.get(spec.section)
        flag_value = getattr(args, spec.dest, None) if args is not None and owner in (None, command) else None
        if flag_value is False and _base_type(spec.type)[0] is bool:
            flag_value = None  # a store_true flag that was not given: it must not hide the env var or file
        if flag_value is not None:
            if spec.one_or_many and isinstance(flag_value, str):
                flag_value = [flag_value]
            value, source = flag_value, f"flag {spec.flag}"
        if spec.check is not None and value is not None:
            problem = spec.check(value)
            if problem:
                raise ConfigError(f"{_source_prefix(source)}[{spec.section}] {spec.name}: {problem}")
        setattr(getattr(cfg, spec.section), spec.name, value)
        cfg.sources[spec.dotted] = source
    tls = (cfg.daemon.tls_cert, cfg.daemon.tls_key)
    if (tls[0] is None) != (tls[1] is None):
        given = "tls_cert" if tls[0] else "tls_key"
        raise ConfigError(f"{_source_prefix(cfg.source('daemon.' + given))}[daemon] {given} is set but "
                          f"{'tls_key' if tls[0] else 'tls_cert'} is not: TLS needs both")
    return cfg


def _source_prefix(source: str) -> str:
    if source.startswith("file "):
        return source[len("file "):] + ": "
    if source.startswith("env "):
        return f"environment variable {source[len('env '):]}: "
    if source.startswith("flag "):
        return f"{source[len('flag '):]}: "
    return ""


# --- rendering -----------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A Python value as TOML text (strings use JSON escapes, which TOML basic strings share)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def render(cfg: Config) -> str:
    """The effective configuration as TOML, each line commented with its source (``config show``)."""
    lines = [f"# configuration file: {cfg.file} ({cfg.file_source})" if cfg.file
             else "# configuration file: none (built-in defaults)"]
    section = None
    for spec in schema():
        if spec.section != section:
            section = spec.section
            lines += ["", f"[{section}]"]
        value = cfg.get(spec.dotted)
        body = f"{spec.name} = {toml_value(value)}" if value is not None else f"# {spec.name} is unset"
        lines.append(f"{body:<60} # {cfg.source(spec.dotted)}")
    return "\n".join(lines) + "\n"
