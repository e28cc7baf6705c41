"""Builds the bismarck PostgreSQL extension's files (no database, no embedded cluster).

The install script ``bismarck--<version>.sql`` is ``sql/bismarck.sql`` with the sources of the
engine package ``bismarckpy`` embedded at the top of every PL/Python body (see ``embed``), so the
server needs only plpython3u and numpy, never this package, and SQL and Python are one build.

Upgrades (``ALTER EXTENSION bismarck UPDATE``) keep data. Statements of ``sql/bismarck.sql`` fall
in two kinds. Code (functions, procedures, aggregates, views, their comments, grants, ``DO``
blocks, which must therefore be idempotent, and ``SET`` statements) is dropped and created or
run again by every upgrade script. Everything else (tables, indexes, types, sequences,
seed rows) is persistent: an upgrade creates tables, sequences and named indexes that do not
exist yet (``IF NOT EXISTS``) and leaves existing ones alone; other changes (new columns, types,
seed rows) go in hand-written migrations ``sql/upgrades/bismarck--<from>--<to>.sql`` between
consecutive versions. Versions that can be upgraded from are listed in ``sql/upgrades.txt``.
An upgrade script is: drop all the extension's code, the migrations along the chain, the
statements of sql/bismarck.sql as above, with the engine embedded.

Layering of the controller: ``build`` (this module) and ``embedded`` (the local cluster, which
writes these files into its private tree) know nothing of each other's callers; ``extension``
installs into a database (using both); ``connection`` composes them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import bismarck_controller
import bismarckpy
from bismarck_controller.embed import digest as engine_digest
from bismarck_controller.embed import embed_engine
from bismarck_controller.errors import SetupError

NAME = "bismarck"
CODE_OBJECTS = ("FUNCTION", "PROCEDURE", "AGGREGATE", "VIEW")


def sql_dir() -> Path:
    """The directory with bismarck.control and bismarck.sql (the repo's or the packaged copy)."""
    candidates = [Path(bismarck_controller.__file__).resolve().parent / "sql",  # wheel
                  Path(bismarckpy.__file__).resolve().parents[2] / "sql"]  # repository
    env = os.environ.get("BISMARCK_SQL_DIR")
    if env:
        candidates.insert(0, Path(env))
    for path in candidates:
        if (path / f"{NAME}.control").is_file() and (path / f"{NAME}.sql").is_file():
            return path
    raise SetupError(
        "The extension sources (bismarck.control, bismarck.sql) were not found next to the "
        "bismarckpy package.",
        "Reinstall bismarckpy (`pip install -e .` in the repository, or from a wheel).")


def version() -> str:
    """The client's extension version: ``bismarckpy.__version__``, checked against the control."""
    control = (sql_dir() / f"{NAME}.control").read_text()
    match = re.search(r"^\s*default_version\s*=\s*'([^']*)'", control, re.MULTILINE)
    declared = match.group(1) if match else None
    if declared != bismarckpy.__version__:
        raise SetupError(
            f"bismarck.control declares default_version {declared!r}, but bismarckpy is "
            f"{bismarckpy.__version__}.",
            "Make sql/bismarck.control and src/bismarckpy/__init__.py agree on the version.")
    return bismarckpy.__version__


def version_key(text: str) -> tuple[int, ...]:
    """A sortable key for versions like ``0.10.2``."""
    return tuple(int(part) for part in re.findall(r"\d+", text))


def engine_modules() -> dict[str, str]:
    """Every ``*.py`` module of bismarckpy by dotted name (``bismarckpy.__init__`` for packages)."""
    package = Path(bismarckpy.__file__).resolve().parent
    modules = {}
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(package.parent).with_suffix("")
        modules[".".join(rel.parts)] = path.read_text(encoding="utf-8")
    return modules


def build_digest() -> str:
    """md5 of sql/bismarck.sql and the engine sources; the scripts record it in ``_build()``."""
    h = hashlib.md5((sql_dir() / f"{NAME}.sql").read_bytes())
    h.update(engine_digest(engine_modules()).encode())
    return h.hexdigest()


def build_section() -> str:
    """The generated function ``bismarck._build()``: which sql/bismarck.sql made the code."""
    return (f"\nCREATE FUNCTION bismarck._build() RETURNS text LANGUAGE sql IMMUTABLE "
            f"PARALLEL SAFE SET search_path = pg_catalog, pg_temp "
            f"AS $$ SELECT '{build_digest()}'::text $$;\n"
            "COMMENT ON FUNCTION bismarck._build() IS\n"
            "    'Private: md5 of the sql/bismarck.sql and engine that made the code "
            "(generated).';\n"
            "REVOKE ALL ON FUNCTION bismarck._build() FROM PUBLIC;\n"
            "GRANT EXECUTE ON FUNCTION bismarck._build() TO bismarck_user;\n")


def build_install_script() -> str:
    """The install script: sql/bismarck.sql with the engine embedded, and ``_build()``."""
    current = version()
    source = (sql_dir() / f"{NAME}.sql").read_text(encoding="utf-8")
    script = source.rstrip("\n") + "\n" + build_section()
    return embed_engine(script, engine_modules(), current)


# --- statements and upgrades ------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One SQL statement of the script, with the comments before it."""

    text: str

    @property
    def words(self) -> list[str]:
        """The first words of the statement, upper-cased, comments skipped."""
        body = re.sub(r"--[^\n]*", " ", self.text)
        body = re.sub(r"/\*.*?\*/", " ", body, flags=re.DOTALL)
        return [w.upper() for w in re.findall(r"[A-Za-z_]+", body[:400])[:8]]

    def is_code(self, views: set[str]) -> bool:
        """Whether the upgrade re-creates this statement (code) rather than keeping it (data)."""
        words = self.words
        if not words:
            return False
        if words[0] in ("GRANT", "REVOKE", "DO", "SET"):
            return True
        if words[:3] == ["CREATE", "OR", "REPLACE"]:
            words = ["CREATE"] + words[3:]
        if words[0] in ("CREATE", "ALTER") and len(words) > 1:
            return words[1] in CODE_OBJECTS
        if words[:2] == ["COMMENT", "ON"] and len(words) > 2:
            if words[2] in CODE_OBJECTS:
                return True
            if words[2] == "COLUMN":
                target = re.search(r"COLUMN\s+([\w.\"]+)\.", self.text, re.IGNORECASE)
                return bool(target) and target.group(1).lower() in views
        return False

    def upgrade_text(self, views: set[str]) -> str | None:
        """The statement as an upgrade runs it: code as is, new tables made idempotent, else None.

        Tables, sequences and named indexes get ``IF NOT EXISTS`` (new ones appear, existing ones
        and their rows stay); their comments and ``pg_extension_config_dump`` calls are re-run.
        Other persistent changes (columns, types, seed rows) need a migration script.
        """
        if self.is_code(views):
            return self.text
        words = self.words
        pattern = None
        if words[:2] in (["CREATE", "TABLE"], ["CREATE", "SEQUENCE"]) and words[2:4] != ["IF",
                                                                                         "NOT"]:
            pattern = r"^((?:\s|--[^\n]*\n)*CREATE\s+(?:TABLE|SEQUENCE))\s"
        elif words[:3] in (["CREATE", "INDEX"], ["CREATE", "UNIQUE"]) and "ON" not in words[:4] \
                and "IF" not in words[:4] and "CONCURRENTLY" not in words[:4]:
            pattern = r"^((?:\s|--[^\n]*\n)*CREATE\s+(?:UNIQUE\s+)?INDEX)\s"
        if pattern:
            return re.sub(pattern, r"\1 IF NOT EXISTS ", self.text, count=1, flags=re.IGNORECASE)
        if words[:2] == ["COMMENT", "ON"] and len(words) > 2 and words[2] in (
                "TABLE", "COLUMN", "SEQUENCE", "INDEX"):
            return self.text
        if words[:3] == ["SELECT", "PG_CATALOG", "PG_EXTENSION_CONFIG_DUMP"] or \
                words[:2] == ["SELECT", "PG_EXTENSION_CONFIG_DUMP"]:
            return self.text
        return None

    def view_name(self) -> str | None:
        """The qualified name of a view this statement creates, lower-cased."""
        match = re.search(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+([\w.\"]+)", self.text,
                          re.IGNORECASE)
        return match.group(1).lower() if match else None


def split_statements(script: str) -> list[Statement]:
    """Split SQL at top-level semicolons (aware of quotes, dollar quotes, comments, psql lines)."""
    out: list[Statement] = []
    buf: list[str] = []
    i, n = 0, len(script)
    at_line_start = True
    while i < n:
        ch = script[i]
        if at_line_start and ch == "\\":
            end = script.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        at_line_start = ch == "\n"
        if script.startswith("--", i):
            end = script.find("\n", i)
            end = n if end < 0 else end
            buf.append(script[i:end])
            i = end
            continue
        if script.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if script.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif script.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            buf.append(script[i:j])
            i = j
            continue
        if ch in ("'", '"'):
            j = i + 1
            backslash = ch == "'" and i > 0 and script[i - 1] in "eE"
            while j < n:
                if backslash and script[j] == "\\":
                    j += 2
                    continue
                if script[j] == ch:
                    if j + 1 < n and script[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(script[i:j + 1])
            i = j + 1
            continue
        if ch == "$":
            match = re.match(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$", script[i:])
            if match and not (i > 0 and (script[i - 1].isalnum() or script[i - 1] == "_")):
                tag = match.group(0)
                end = script.find(tag, i + len(tag))
                end = n if end < 0 else end + len(tag)
                buf.append(script[i:end])
                i = end
                continue
        if ch == ";":
            buf.append(";")
            text = "".join(buf).strip()
            if text != ";":
                out.append(Statement(text))
            buf = []
            i += 1
            continue
        buf.append(ch)
        i += 1
    rest = "".join(buf).strip()
    if re.sub(r"--[^\n]*", "", rest).strip():
        out.append(Statement(rest))
    return out


_DROP_CODE = r"""
-- Drop the extension's code (functions, procedures, aggregates, views) so that the code below can
-- create it again; tables and their rows stay. Objects of users that depend on bismarck code
-- stop the upgrade with an error instead of being dropped.
DO $bismarck_upgrade$
DECLARE
    ext oid := (SELECT oid FROM pg_extension WHERE extname = 'bismarck');
    item record;
    progress boolean := true;
    last_error text;
BEGIN
    WHILE progress LOOP
        progress := false;
        FOR item IN
            SELECT format('DROP VIEW %s', c.oid::regclass) AS stmt
            FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_extension'::regclass
              AND d.refobjid = ext AND d.deptype = 'e' AND c.relkind = 'v'
            UNION ALL
            SELECT format(CASE p.prokind WHEN 'a' THEN 'DROP AGGREGATE %s'
                                         WHEN 'p' THEN 'DROP PROCEDURE %s'
                                         ELSE 'DROP FUNCTION %s' END, p.oid::regprocedure)
            FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
            WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
              AND d.refobjid = ext AND d.deptype = 'e'
        LOOP
            BEGIN
                EXECUTE item.stmt;
                progress := true;
            EXCEPTION WHEN dependent_objects_still_exist THEN
                last_error := SQLERRM;
            END;
        END LOOP;
    END LOOP;
    IF EXISTS (
        SELECT 1 FROM pg_depend d
        LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
        WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext AND d.deptype = 'e'
          AND (d.classid = 'pg_proc'::regclass OR c.relkind = 'v')
    ) THEN
        RAISE EXCEPTION 'cannot upgrade extension bismarck: objects outside it depend on its code'
            USING DETAIL = last_error,
                  HINT = 'Drop the dependent objects (for example views that call bismarck '
                         'functions), run ALTER EXTENSION bismarck UPDATE, then create them again.';
    END IF;
END
$bismarck_upgrade$;
"""


def upgrade_versions() -> list[str]:
    """Earlier released versions listed in sql/upgrades.txt, oldest first."""
    path = sql_dir() / "upgrades.txt"
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            found.append(line)
    return sorted(found, key=version_key)


def build_upgrade_script(old: str, chain: Iterable[str] | None = None,
                         new: str | None = None) -> str:
    """The script ``bismarck--<old>--<new>.sql``: drop code, migrate, re-create code."""
    new = new or version()
    versions = sorted({*(chain if chain is not None else upgrade_versions()), old, new},
                      key=version_key)
    versions = [v for v in versions if version_key(old) <= version_key(v) <= version_key(new)]
    parts = [f"-- bismarck upgrade {old} -> {new}, generated from sql/bismarck.sql.\n"
             f"\\echo Use \"ALTER EXTENSION bismarck UPDATE TO '{new}'\" to load this file. "
             f"\\quit\n", _DROP_CODE]
    for a, b in zip(versions, versions[1:]):
        migration = sql_dir() / "upgrades" / f"{NAME}--{a}--{b}.sql"
        if migration.is_file():
            parts.append(f"\n-- Migration {a} -> {b} (sql/upgrades/{migration.name})\n")
            parts.append(migration.read_text(encoding="utf-8"))
    statements = split_statements((sql_dir() / f"{NAME}.sql").read_text(encoding="utf-8"))
    views = {name for s in statements if (name := s.view_name())}
    parts.append("\n-- From sql/bismarck.sql: the code, and tables that do not exist yet\n")
    parts += [text + "\n\n" for s in statements if (text := s.upgrade_text(views))]
    parts.append(build_section())
    return embed_engine("".join(parts), engine_modules(), new)


def extension_files(old_versions: Iterable[str] | None = None) -> dict[str, str]:
    """File name -> content: the control file, the install script and the upgrade scripts."""
    current = version()
    olds = list(upgrade_versions() if old_versions is None else old_versions)
    files = {
        f"{NAME}.control": (sql_dir() / f"{NAME}.control").read_text(),
        f"{NAME}--{current}.sql": build_install_script(),
    }
    for old in olds:
        if version_key(old) < version_key(current):
            files[f"{NAME}--{old}--{current}.sql"] = build_upgrade_script(old, olds)
    return files


def install_files(ext_dir: Path | str | None = None) -> list[Path]:
    """Write the extension files into ``ext_dir`` (default: ``pg_config --sharedir``/extension)."""
    target = Path(ext_dir) if ext_dir is not None else system_sharedir() / "extension"
    if not target.is_dir():
        raise SetupError(f"{target} is not a directory.",
                         "Pass the PostgreSQL share directory (`pg_config --sharedir`) of the "
                         "server with --sharedir.")
    written = []
    for name, content in extension_files().items():
        path = target / name
        if path.is_file() and not path.is_symlink() and path.read_text() == content:
            written.append(path)
            continue
        tmp = target / f".{name}.{os.getpid()}.new"  # unique: other processes may write too
        try:
            tmp.write_text(content, encoding="utf-8")
            tmp.chmod(0o644)
            if path.is_symlink():
                path.unlink()
            os.replace(tmp, path)
        except PermissionError:
            raise SetupError(f"No permission to write the extension files into {target}.",
                             "Run `bismarck install --files` (or `make install-extension`) as "
                             "root on the server host.") from None
        written.append(path)
    return written


def system_sharedir(major: int | None = None) -> Path:
    """The share directory of this host's PostgreSQL (``pg_config --sharedir``)."""
    candidates = []
    if major is not None:
        candidates.append(f"/usr/lib/postgresql/{major}/bin/pg_config")
    candidates.append(shutil.which("pg_config") or "")
    for pg_config in filter(None, candidates):
        try:
            out = subprocess.run([pg_config, "--sharedir"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out and (Path(out) / "extension" / "plpgsql.control").is_file():
            return Path(out)
    raise SetupError(
        "The PostgreSQL share directory of this host was not found (no pg_config).",
        "Install postgresql-15 here, or pass the directory with --sharedir.")
