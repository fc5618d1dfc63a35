"""pgbench initialized and run through the target in every query mode."""

from __future__ import annotations

import re

import pytest

import pgharness as h


def pgbench(ep: h.Endpoint, *args: str, timeout: float = 300) -> str:
    res = h.run([h.client_bin("pgbench"), *args], env=ep.libpq_env(), timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"pgbench {' '.join(args)} exited {res.returncode}:\n{out}"
    return out


def check_run(out: str, expected: int):
    m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert m, out
    assert (int(m.group(1)), int(m.group(2))) == (expected, expected), out
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m, out
    assert int(m.group(1)) == 0, out


@pytest.fixture
def bench(target, pg):
    """pgbench -i -s 1 through the target; checks the tables are there afterwards."""
    out = pgbench(target, "-i", "-s", "1", "-q")
    assert "done in" in out, out
    counts = pg.sql("SELECT (SELECT count(*) FROM pgbench_accounts), "
                    "(SELECT count(*) FROM pgbench_branches), (SELECT count(*) FROM pgbench_tellers)",
                    dbname=target.dbname)
    assert counts == [(100000, 1, 10)]
    return target


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_modes(bench, pg, mode):
    out = pgbench(bench, "-M", mode, "-S", "-t", "200", "-c", "4", "-j", "2", "-n")
    check_run(out, 800)
    before = pg.sql("SELECT count(*) FROM pgbench_history", dbname=bench.dbname)[0][0]
    out = pgbench(bench, "-M", mode, "-t", "100", "-c", "4", "-j", "2", "-n")
    check_run(out, 400)
    after = pg.sql("SELECT count(*) FROM pgbench_history", dbname=bench.dbname)[0][0]
    # every TPC-B-like transaction inserts exactly one history row
    assert after - before == 400
    # balances stay consistent: the sum of deltas is the same on every table
    sums = pg.sql("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                  "(SELECT sum(bbalance) FROM pgbench_branches), "
                  "(SELECT sum(tbalance) FROM pgbench_tellers), "
                  "(SELECT sum(delta) FROM pgbench_history)", dbname=bench.dbname)[0]
    assert len(set(sums)) == 1, sums
