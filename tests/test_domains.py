"""Feature columns of a domain type are read through the type the domain is over.

A domain over double precision, integer, numeric or boolean (or over another such domain), a
domain over float8[] and an array of such a domain train as their base types, on every path
that reads features (a packed copy, a row copy, 'blocks', pack, matrix factorisation's value);
a domain over text is still refused, under its own name.
"""

from __future__ import annotations

import psycopg
import pytest

SCALARS = "ARRAY['a', 'b', 'c', 'f', 'e']"


@pytest.fixture(scope="module")
def domain_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS dom_t, dom_plain, dom_mf")
        for name in ("dom_price2", "dom_price", "dom_cnt", "dom_amt", "dom_flag", "dom_vec",
                     "dom_word", "dom_rid"):
            c.execute(f"DROP DOMAIN IF EXISTS {name} CASCADE")
        c.execute("CREATE DOMAIN dom_price AS float8 CHECK (VALUE > -1e9)")
        c.execute("CREATE DOMAIN dom_price2 AS dom_price")
        c.execute("CREATE DOMAIN dom_cnt AS int")
        c.execute("CREATE DOMAIN dom_amt AS numeric")
        c.execute("CREATE DOMAIN dom_flag AS boolean")
        c.execute("CREATE DOMAIN dom_vec AS float8[]")
        c.execute("CREATE DOMAIN dom_word AS text")
        c.execute("CREATE DOMAIN dom_rid AS bigint")
        c.execute(
            "CREATE TABLE dom_t AS SELECT (i % 11)::float8::dom_price AS a, "
            "(i % 7)::dom_cnt AS b, (i / 30.0)::dom_amt AS c, (i % 2 = 0)::dom_flag AS f, "
            "(i % 5 * 0.5)::dom_price2 AS e, ARRAY[i % 11, i % 7]::float8[]::dom_vec AS v, "
            "ARRAY[(i % 11)::float8::dom_price, (i % 7)::float8::dom_price] AS pv, "
            "('w' || i % 3)::dom_word AS w, (i % 3 = 0) AS y FROM generate_series(1, 300) AS i")
        c.execute("CREATE TABLE dom_plain AS SELECT a::float8 AS a, b::int AS b, "
                  "c::numeric AS c, f::boolean AS f, e::float8 AS e, y FROM dom_t")
        c.execute("CREATE TABLE dom_mf AS SELECT (i % 20)::dom_rid AS u, (i % 13)::dom_rid AS it, "
                  "(i % 5 + 1)::float8::dom_price AS r FROM generate_series(1, 400) AS i")


@pytest.mark.parametrize("shuffle", ["'once'", "'blocks'", "'always'"])
def test_domain_features_train_as_their_base_types(conn, domain_table, shuffle: str) -> None:
    fit = f"max_epochs => 3, seed => 1, shuffle => {shuffle}, validation_fraction => 0"
    for table, model in (("dom_t", "dom_m"), ("dom_plain", "dom_ref")):
        conn.execute(f"SELECT * FROM bismarck.train_glm('{table}', 'y', {SCALARS}, "
                     f"'{model}', {fit})")
    coef, ref = (conn.execute("SELECT coef FROM bismarck.models WHERE model_name = %s "
                              "ORDER BY version DESC LIMIT 1", [m]).fetchone()[0]
                 for m in ("dom_m", "dom_ref"))
    assert coef == pytest.approx(ref)  # the same numbers as the plain columns
    for column in ("'v'", "'pv'"):
        row = conn.execute(f"SELECT epochs FROM bismarck.train_glm('dom_t', 'y', "
                           f"ARRAY[{column}], 'dom_arr', {fit})").fetchone()
        assert row == (3,)


def test_pack_and_mf_read_domain_columns(conn, domain_table) -> None:
    conn.execute("DROP TABLE IF EXISTS dom_packed")
    rows = conn.execute(f"SELECT rows FROM bismarck.pack('dom_t', 'y', {SCALARS}, "
                        "'dom_packed')").fetchone()
    assert rows == (300,)
    assert conn.execute("SELECT count(*) FROM bismarck.train_mf('dom_mf', 'u', 'it', 'r', "
                        "'dom_mf_m', max_epochs => 2)").fetchone() == (1,)


def test_a_domain_over_text_is_still_refused_by_its_name(conn, domain_table) -> None:
    with pytest.raises(psycopg.errors.DatatypeMismatch,
                       match=r'feature column "w" has type public\.dom_word \(a domain over text'):
        conn.execute("SELECT * FROM bismarck.train_glm('dom_t', 'y', ARRAY['a', 'w'], 'dom_w')")
