"""Embed the engine's Python sources into every PL/Python body of the install script.

Parallel workers cannot run SQL from PL/Python (``plpy.execute`` opens a subtransaction, which
parallel mode forbids), so each function must be able to load the engine on its own. The build
puts a generated preamble at the top of each ``LANGUAGE plpython3u`` body: the sources of package
``bismarckpy`` as string literals and a loader that imports them once per backend into ``GD``,
keyed by the sources' digest (an upgraded extension never runs a stale engine).
"""

from __future__ import annotations

import hashlib
import re

PREAMBLE = '''\
# --- generated at build time: the bismarckpy engine {version} (sha256 {digest}) ---
BISMARCK_ENGINE = "bismarck-engine-{digest}"


def bismarck_engine(gd):
    """Import package bismarckpy from the sources below into this backend, once."""
    import importlib.machinery
    import sys

    sources = {sources}

    # A finder and loader by protocol, without importlib.abc or importlib.util: importing those
    # (importlib.resources, zipfile, tempfile, ...) cost every parallel worker, a new process
    # in every epoch, milliseconds before its first row.
    class BismarckEngineLoader:
        def find_spec(self, fullname, path=None, target=None):
            if fullname + ".__init__" in sources:
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            if fullname in sources:
                return importlib.machinery.ModuleSpec(fullname, self)
            return None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            key = module.__name__
            if key + ".__init__" in sources:
                key += ".__init__"
            exec(compile(sources[key], "<bismarck:" + key + ">", "exec"), module.__dict__)

    for name in [m for m in sys.modules if m == "bismarckpy" or m.startswith("bismarckpy.")]:
        del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path
                        if type(f).__name__ != "BismarckEngineLoader"]
    sys.meta_path.insert(0, BismarckEngineLoader())
    import bismarckpy.server

    for key in [k for k in gd if str(k).startswith("bismarck-engine-")]:
        del gd[key]
    gd[BISMARCK_ENGINE] = bismarckpy.server
    return bismarckpy.server
# --- end of generated preamble ---
'''

_BODY_START = re.compile(r"(LANGUAGE plpython3u\b[^;$]*?AS \$\$\n)")


def digest(sources: dict[str, str]) -> str:
    """A short, stable fingerprint of the engine sources."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return h.hexdigest()[:16]


def preamble(sources: dict[str, str], version: str) -> str:
    """The generated Python that defines ``BISMARCK_ENGINE`` and ``bismarck_engine(GD)``."""
    for name, text in sources.items():
        if "$$" in text:
            raise ValueError(f"engine module {name} contains '$$', which would end the body")
    literal = "{\n" + "".join(f"        {name!r}: {text!r},\n"
                              for name, text in sorted(sources.items())) + "    }"
    return PREAMBLE.format(version=version, digest=digest(sources), sources=literal)


def embed_engine(script: str, sources: dict[str, str], version: str) -> str:
    """Insert the preamble after the ``AS $$`` of every PL/Python function in ``script``."""
    text = preamble(sources, version)
    expected = len(re.findall(r"^(?!\s*--).*LANGUAGE plpython3u\b", script, re.MULTILINE))
    out, n = _BODY_START.subn(lambda m: m.group(1) + text, script)
    if n != expected:
        raise ValueError(f"found {expected} PL/Python functions but {n} bodies written as "
                         "'LANGUAGE plpython3u ... AS $$' + newline; write them that way")
    return out
