#!/usr/bin/env python
"""The packed epoch's kernel outside the database, over a packed table's real blocks.

Run by the server's Python (``/usr/bin/python3``: the system numpy and BLAS the server loads,
not the client's wheel), with the engine sources of ``--src``: it times the GLM's
``transition_block`` over every block of a dump (one logistic epoch, batch = block = 512, the
model at zero), best CPU time of ``--repeat``. Make the dump once with the client's Python::

    .venv/bin/python benchmarks/kernel_offline.py --dump /tmp/blocks.bin
    OPENBLAS_CORETYPE=Prescott /usr/bin/python3 benchmarks/kernel_offline.py /tmp/blocks.bin
"""

from __future__ import annotations

import argparse
import struct
import sys
import time


def dump(path: str, table: str) -> None:
    """Every block of ``table`` (column ``data``, in ``block`` order), length-prefixed."""
    import psycopg
    from psycopg import sql

    from bismarck_controller import connection

    conn = psycopg.connect(connection.resolve_dsn(None), autocommit=True)
    query = sql.SQL("SELECT data FROM {} ORDER BY block").format(sql.Identifier(table))
    with open(path, "wb") as f:
        for (b,) in conn.execute(query):
            f.write(struct.pack("<i", len(b)))
            f.write(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("blocks", nargs="?", help="a dump made with --dump")
    ap.add_argument("--dump", help="write the blocks of --table to this file and stop")
    ap.add_argument("--table", default="bench_1000000_100_p512")
    ap.add_argument("--src", default="src", help="the directory holding package bismarckpy")
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    if a.dump:
        dump(a.dump, a.table)
        return 0
    sys.path.insert(0, a.src)
    from bismarckpy.kinds import glm

    with open(a.blocks, "rb") as f:
        data = f.read()
    blocks, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<i", data, at)
        blocks.append(data[at + 4:at + 4 + n])
        at += 4 + n
    init = glm.initialize(a.features, loss="logistic", batch_size=512, eta=0.5, itemsize=4,
                          y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0))
    best = float("inf")
    for _ in range(a.repeat):
        t0 = time.thread_time()
        state = None
        for b in blocks:
            state = glm.transition_block(state, b, init)
        best = min(best, time.thread_time() - t0)
    print(f"{len(blocks)} blocks: {best:.3f} s CPU, {best / len(blocks) * 1e6:.1f} us per block")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
