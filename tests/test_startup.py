"""Start-up: one-shot commands import no module they have no use for (structlog, logging, sqlite_utils).

Speed itself is measured in bench/ (no timed assertions here); this checks the imports that make it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import tvixd_env

NOT_FOR_ONE_SHOT = ("structlog", "asyncio", "sqlite_utils", "grpc", "gevent", "cryptography")
"""(``logging`` too where possible: concurrent.futures imports it, for the thread pools of a directory import.)"""


def imported(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m tvixd ARGS``; its result and the top-level packages it imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "tvixd", *args], capture_output=True, text=True,
                       timeout=120, check=False, env=tvixd_env())  # fmt: skip
    names = set()
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return r, names


def imported_by_interpreter() -> set[str]:
    """The top-level packages ``python -c pass`` imports here (site, .pth files)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                       timeout=60, check=True, env=tvixd_env())  # fmt: skip
    return {ln.rsplit("|", 1)[1].strip().split(".")[0] for ln in r.stderr.splitlines() if ln.startswith("import time:")}


def store_flags(state: Path) -> list[str]:
    db = f"sqlite://{state / 'store.sqlite'}"
    return ["--blob-service-addr", f"fs://{state / 'blobs'}", "--directory-service-addr", db,
            "--path-info-service-addr", db]  # fmt: skip


def test_one_file_import_into_a_fresh_store_and_path_info_import_nothing_heavy(tmp_path: Path):
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello\n")
    flags = store_flags(tmp_path / "state")
    r, names = imported("import", *flags, str(src))
    assert r.returncode == 0, r.stderr
    store_path = r.stdout.strip()
    assert store_path.startswith("/nix/store/") and store_path.endswith("-hello.txt")
    # One small file: no thread pool (concurrent.futures, logging), no protobuf (the PathInfo is encoded by
    # tvixd.castore.entries), no dataclasses (with inspect), no ctypes (syncfs: a small batch fsyncs each file).
    assert names & {*NOT_FOR_ONE_SHOT, "logging", "concurrent", "google", "dataclasses", "inspect", "ctypes"} == set()

    # A small directory: its few files are stored from the walk thread (no pool: no concurrent.futures, logging),
    # the directory put as entries (no protobuf).
    (tmp_path / "small").mkdir()
    for name in ("a", "b"):
        (tmp_path / "small" / name).write_bytes(name.encode())
    r, names = imported("import", *flags, str(tmp_path / "small"))
    assert r.returncode == 0 and r.stdout.strip().endswith("-small"), r.stderr
    assert names & {*NOT_FOR_ONE_SHOT, "logging", "concurrent", "google"} == set()  # directories as entries too

    r, names = imported("path-info", *flags, store_path)
    assert r.returncode == 0 and store_path in r.stdout, r.stderr
    assert names & {*NOT_FOR_ONE_SHOT, "logging", "google"} == set()
    r, names = imported("path-info", "--json", *flags, store_path)  # the row read without protobuf
    assert r.returncode == 0 and '"narHash": "sha256:' in r.stdout, r.stderr
    assert names & {*NOT_FOR_ONE_SHOT, "logging", "google"} == set()

    # Read commands write and hash nothing: no sha256, no ctypes (syncfs), no temp files or random names
    # (beyond what this interpreter's own start-up imports: a site .pth may import some of them).
    interpreter = imported_by_interpreter()
    for command in ("path-info", "dump-path"):
        r, names = imported(command, *flags, store_path)
        assert r.returncode == 0, r.stderr
        assert (names - interpreter) & {*NOT_FOR_ONE_SHOT, *NOT_FOR_READING} == set(), command


def test_read_commands_import_no_protobuf(tmp_path: Path):
    """The root node and the directories are read from the SQLite rows without protobuf (~50 ms of start-up):
    dump-path of a store path or of a path inside one, ls (plain, -lR, --json) and cat through a symlink."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"contents")
    (tree / "link").symlink_to("sub")
    flags = store_flags(tmp_path / "state")
    for src in (tree, tree / "sub" / "f"):
        r = subprocess.run([sys.executable, "-m", "tvixd", "import", *flags, str(src)], capture_output=True,
                           text=True, timeout=120, check=True, env=tvixd_env())  # fmt: skip
        store_path = r.stdout.strip()
        r, names = imported("dump-path", *flags, store_path)
        assert r.returncode == 0 and "nix-archive-1" in r.stdout, r.stderr
        assert "google" not in names, src
    tree_path = subprocess.run([sys.executable, "-m", "tvixd", "import", *flags, str(tree)], capture_output=True,
                               text=True, timeout=120, check=True, env=tvixd_env()).stdout.strip()  # fmt: skip
    for args, expected in ((["dump-path", f"{tree_path}/sub"], "nix-archive-1"),
                           (["ls", tree_path], "./sub"), (["ls", "-lR", tree_path], "./sub/f"),
                           (["ls", "--json", "-R", tree_path], '"f":{"type":"regular","size":8}'),
                           (["cat", f"{tree_path}/link/f"], "contents")):  # fmt: skip
        r, names = imported(*args[:1], *flags, *args[1:])
        assert r.returncode == 0 and expected in r.stdout, (args, r.stdout, r.stderr)
        assert "google" not in names, args


NOT_FOR_READING = ("logging", "hashlib", "_hashlib", "ctypes", "secrets", "random", "tempfile",
                   "dataclasses", "inspect", "pathlib")
"""What `dump-path` and `path-info` have no use for (each was ~1-3 ms of their start-up; dataclasses with
inspect 12-17 ms)."""


def test_a_failing_one_shot_command_still_reports_in_one_line(tmp_path: Path):
    r, _ = imported("import", *store_flags(tmp_path / "state"), str(tmp_path / "missing"))
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
    assert len(errors) == 1 and "missing" in errors[0], errors


def test_command_map_matches_what_the_modules_register():
    """COMMANDS (used to build only the parser a command needs) names every subcommand, each in its module."""
    import argparse

    from tvixd.cli import COMMANDS, build_parser

    def choices(parser: argparse.ArgumentParser) -> set[str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return set(sub.choices)

    assert choices(build_parser()) == set(COMMANDS)
    for command, module in COMMANDS.items():
        assert command in choices(build_parser(module)), command


def test_command_module_finds_the_subcommand_after_global_options():
    from tvixd.cli import command_module

    assert command_module(["path-info", "/nix/store/x"]) == "read_cmds"
    assert command_module(["--config", "daemon", "import", "x"]) == "import_cmd"  # a file named "daemon"
    assert command_module(["--config=f.toml", "--log-level", "debug", "daemon"]) == "daemon_cmd"
    for argv in ([], ["--help"], ["--version"], ["dump-pth"], ["--log-level"]):
        assert command_module(argv) is None, argv  # the full parser answers these


def test_a_one_shot_command_declares_only_its_own_arguments(tmp_path: Path):
    """`tvixd path-info` loads no other command's module; `tvixd --help` still lists every command."""
    # (importtime does not show modules loaded through importlib.import_module: ask sys.modules.)
    script = ("import runpy, sys\nsys.argv = ['tvixd', *sys.argv[1:]]\ntry:\n"
              "    runpy.run_module('tvixd', run_name='__main__')\nexcept SystemExit:\n    pass\n"
              "print(' '.join(m for m in sys.modules if m.startswith('tvixd.cli.')), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", script, "path-info", *store_flags(tmp_path),
                        "/nix/store/00000000000000000000000000000000-x"], capture_output=True, text=True,
                       timeout=120, check=False, env=tvixd_env())  # fmt: skip
    modules = set(r.stderr.splitlines()[-1].split())
    assert "tvixd.cli.read_cmds" in modules, r.stderr
    assert modules & {"tvixd.cli.daemon_cmd", "tvixd.cli.mount_cmd", "tvixd.cli.binary_cache_cmd"} == set()
    r = subprocess.run([sys.executable, "-m", "tvixd", "--help"], capture_output=True, text=True, timeout=120,
                       check=True, env=tvixd_env())  # fmt: skip
    for command in ("daemon", "import", "dump-path", "path-info", "ls", "cat", "mount", "binary-cache", "config"):
        assert command in r.stdout


def test_argparse_messages_read_as_before_without_gettext():
    """argparse's own messages skip gettext (tvixd.cli._untranslated_argparse): the same English text,
    singular and plural forms included."""
    cases = [
        (["import", "--workers"], "tvixd import: error: argument --workers: expected one argument"),
        (["dump-pat"], "tvixd: error: argument COMMAND: invalid choice: 'dump-pat' (choose from 'daemon',"),
        (["ls"], "tvixd ls: error: the following arguments are required: STORE_PATH"),
    ]
    for args, message in cases:
        r = subprocess.run([sys.executable, "-m", "tvixd", *args], capture_output=True, text=True, timeout=120,
                           check=False, env=tvixd_env())  # fmt: skip
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    r = subprocess.run([sys.executable, "-m", "tvixd", "ls", "--help"], capture_output=True, text=True, timeout=120,
                       check=True, env=tvixd_env())  # fmt: skip
    assert r.stdout.startswith("usage: tvixd ls [-h]") and "show this help message and exit" in r.stdout
    assert "options:" in r.stdout and "positional arguments:" in r.stdout
