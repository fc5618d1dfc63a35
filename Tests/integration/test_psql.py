"""psql sessions run through the target and compared with the same session run directly
against Postgres: results, errors, notices and COPY data must be identical."""

from __future__ import annotations

from pathlib import Path

import pytest

import pgharness as h

SCRIPT = r"""
\set VERBOSITY verbose
\set SHOW_CONTEXT always
\pset null '<NULL>'
SELECT 1 AS one; SELECT 2 AS two;
SELECT 'a' AS x \; SELECT 'b' AS y \; SELECT 'c' AS z;
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, note text, price numeric(10,2));
INSERT INTO items VALUES (1, 'åpple', NULL, 1.50), (2, 'бета', 'x', NULL), (3, '日本語', '🐘', 3.00);
SELECT * FROM items ORDER BY id;
SELECT g, g * g AS sq, CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('z', g) END AS s
  FROM generate_series(1, 60) g;
BEGIN;
SELECT 1/0;
SELECT 1;
ROLLBACK;
SELECT 'after rollback' AS ok;
BEGIN;
INSERT INTO items VALUES (4, 'four', NULL, 4);
SAVEPOINT s1;
INSERT INTO items VALUES (4, 'dup', NULL, 4);
ROLLBACK TO SAVEPOINT s1;
COMMIT;
CREATE FUNCTION noisy(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE NOTICE 'noisy % ü', n;
  RAISE WARNING 'careful %', n USING HINT = 'a hint', DETAIL = 'a detail';
  RETURN n * 2;
END $$;
SELECT noisy(21);
DO $$ BEGIN RAISE NOTICE 'from DO block'; END $$;
DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING ERRCODE = 'P0001', HINT = 'hint text'; END $$;
\copy items TO 'out.csv' WITH (FORMAT csv, HEADER)
\copy items (id, name, note, price) FROM 'in.csv' WITH (FORMAT csv)
\copy items FROM 'bad.csv' WITH (FORMAT csv)
SELECT count(*) AS n_after_copy FROM items;
COPY items (id, name, note, price) FROM STDIN;
100	inline-row	\N	9.99
101	второй	tab\there	0
\.
\copy (SELECT id, name, note, price FROM items ORDER BY id) TO 'out2.txt'
COPY (SELECT id, name FROM items WHERE id > 99 ORDER BY id) TO STDOUT WITH (FORMAT csv);
INSERT INTO items VALUES (1, 'dup', NULL, 0);
SELECT * FROM nonexistent_table;
SELECT 'unterminated;
';
SELECT NULL::text AS n, ''::text AS empty, E'line1\nline2' AS multi, 'x' || NULL AS concat_null;
SELECT array[1, NULL, 3] AS arr, '{"a": [1, 2, null]}'::jsonb AS j, '\xdeadbeef'::bytea AS b;
SHOW client_encoding;
SHOW server_encoding;
SHOW DateStyle;
SET TIME ZONE 'UTC';
SELECT '2024-02-29 12:34:56+02'::timestamptz AS ts;
PREPARE p(int) AS SELECT $1 + 1 AS next;
EXECUTE p(41);
DEALLOCATE p;
VALUES (1, 'one'), (2, NULL), (NULL, 'three');
"""

IN_CSV = "10,ten,,10.10\n11,\"quoted, comma\",\"\",11\n12,ünïcödé,🙂,12.12\n"
BAD_CSV = "20,twenty,,20\n21,bad,,not-a-number\n"


def run_psql_session(ep: h.Endpoint, workdir: Path) -> tuple[str, dict[str, str]]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "script.sql").write_text(SCRIPT)
    (workdir / "in.csv").write_text(IN_CSV)
    (workdir / "bad.csv").write_text(BAD_CSV)
    res = h.run([h.client_bin("psql"), "-X", "-v", "ON_ERROR_STOP=0", "-f", "script.sql"],
                env=ep.libpq_env(), cwd=workdir)
    # psql exits 0 with ON_ERROR_STOP=0 even when statements failed; 2 means connection trouble
    assert res.returncode == 0, f"psql exited {res.returncode}: {res.stderr}"
    out = "--- stdout ---\n" + res.stdout + "--- stderr ---\n" + res.stderr
    files = {n: (workdir / n).read_text() for n in ("out.csv", "out2.txt")}
    return out, files


def run_psql_c(ep: h.Endpoint, *commands: str) -> str:
    args = [h.client_bin("psql"), "-X", "-v", "ON_ERROR_STOP=0"]
    for c in commands:
        args += ["-c", c]
    res = h.run(args, env=ep.libpq_env())
    return f"rc={res.returncode}\n--- stdout ---\n{res.stdout}--- stderr ---\n{res.stderr}"


def reference(pg: h.PostgresServer) -> h.Endpoint:
    """Postgres itself, as the upstream role, on a database of its own."""
    return h.Endpoint("direct", pg.host, pg.port, "proxy_scram", h.ROLE_PASSWORDS["proxy_scram"],
                      pg.create_database())


def test_psql_script_same_as_postgres(target, pg, tmp_path):
    ref_out, ref_files = run_psql_session(reference(pg), tmp_path / "ref")
    out, files = run_psql_session(target, tmp_path / "target")

    # the reference itself shows what the script is about (guards against a vacuous comparison)
    for needed in ["22012: division by zero",
                   "25P02: current transaction is aborted",
                   "NOTICE:  00000: noisy 21 ü",
                   "WARNING:  01000: careful 21",
                   "DETAIL:  a detail", "HINT:  a hint",
                   "NOTICE:  00000: from DO block",
                   "P0001: custom failure",
                   "23505: duplicate key value violates unique constraint",
                   "42P01: relation \"nonexistent_table\" does not exist",
                   "22P02: invalid input syntax for type numeric",
                   "CONTEXT:  COPY items, line 2",
                   "日本語", "🐘", "<NULL>", "after rollback", "100,inline-row", "101,второй",
                   " n_after_copy \n--------------\n            7\n"]:
        assert needed in ref_out, f"reference output lacks {needed!r}:\n{ref_out}"
    assert "ünïcödé" in ref_files["out2.txt"] and "tab\\there" in ref_files["out2.txt"]

    assert out == ref_out
    assert files == ref_files


@pytest.mark.parametrize("commands", [
    ("SELECT 1 AS a; SELECT 2 AS b;",),
    ("SELECT 1 AS a; SELECT 1/0; SELECT 3 AS c;",),
    ("BEGIN; SELECT 1; COMMIT; SELECT 'x' AS after;",),
    ("CREATE TEMP TABLE t(x int); INSERT INTO t VALUES (1),(2); SELECT sum(x) FROM t;",
     "SELECT 'second -c' AS s"),
    ("SELECT repeat('ab', 5000) AS long_value;",),
    ("DO $$ BEGIN RAISE NOTICE 'n1'; RAISE NOTICE 'n2'; END $$; SELECT 42 AS answer;",),
], ids=["two-selects", "error-mid-query", "txn-in-one-query", "two-c-options", "long-value",
        "notices-then-result"])
def test_psql_single_query_string(target, pg, commands):
    """`psql -c` sends the whole string as one Query message (implicit transaction)."""
    ref = run_psql_c(reference(pg), *commands)
    got = run_psql_c(target, *commands)
    assert "rc=" in ref and ("ERROR" in ref) == ("1/0" in commands[0])
    assert got == ref


def test_psql_copy_roundtrip_large(target, tmp_path):
    """\\copy out and back in of ~5 MB; content compared byte for byte."""
    env = target.libpq_env()
    psql = h.client_bin("psql")
    setup = ("CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat('é', g % 50) AS payload "
             "FROM generate_series(1, 60000) g; CREATE TABLE big2 (LIKE big);")
    r = h.run([psql, "-X", "-v", "ON_ERROR_STOP=1", "-c", setup], env=env)
    assert r.returncode == 0, r.stderr
    r = h.run([psql, "-X", "-v", "ON_ERROR_STOP=1",
               "-c", "\\copy (SELECT * FROM big ORDER BY id) TO 'big.out'"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "big.out").read_bytes()
    assert data.count(b"\n") == 60000 and len(data) > 3_000_000
    r = h.run([psql, "-X", "-v", "ON_ERROR_STOP=1", "-c", "\\copy big2 FROM 'big.out'"],
              env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "COPY 60000" in r.stdout
    r = h.run([psql, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c",
               "SELECT count(*), (SELECT md5(string_agg(payload, ',' ORDER BY id)) FROM big) = "
               "md5(string_agg(payload, ',' ORDER BY id)) FROM big2"], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "60000|t"
