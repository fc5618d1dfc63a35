"""`tenant-proxy demo`, the README's one command: a throwaway PostgreSQL with the demo schema and
two tenants behind the proxy (TLS required), the admin console and the metrics endpoint."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

import pgharness as h


def psql(port: int, user: str, password: str, dbname: str, sql: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGPASSWORD": password, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10",
                "PGPASSFILE": "/dev/null", "LC_ALL": "C.UTF-8"})
    return h.run([h.client_bin("psql"), "-X", "-w", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", user,
                  "-d", dbname, "-c", sql], env=env, timeout=60)


# As root (CI) the demo also runs as an unprivileged user, as a newcomer runs it: a socket option
# only root may set once failed every connection there while this test passed as root.
@pytest.mark.parametrize("run_as", [None, "nobody"] if h.is_root() else [None])
def test_demo_serves_two_tenants_the_console_and_metrics(run_as):
    # PostgreSQL runs as the postgres user when root: its data dir's parents must be traversable
    tmp_path = Path(tempfile.mkdtemp(prefix="tp-demo-"))
    tmp_path.chmod(0o755)
    port = h.free_port()
    out_path = tmp_path / "demo.out"
    command = [str(h.proxy_bin()), "demo", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    identity, env = {}, None
    if run_as:
        # The user's own copy of the binary and the SQL (the checkout may be root's alone).
        account = pwd.getpwnam(run_as)
        shutil.copy2(h.proxy_bin(), tmp_path / "tenant-proxy")
        shutil.copytree(h.REPO_ROOT / "deploy" / "sql", tmp_path / "sql")
        command[0] = str(tmp_path / "tenant-proxy")
        command += ["--sql-dir", str(tmp_path / "sql")]
        for path in (tmp_path, *tmp_path.rglob("*")):
            os.chown(path, account.pw_uid, account.pw_gid)
        identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        env = {**os.environ, "HOME": str(tmp_path), "USER": run_as}
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True, env=env, **identity)
    try:
        h.wait_until(lambda: proc.poll() is not None or "is listening" in out_path.read_text(), 180,
                     "the demo to start")
        assert proc.poll() is None, out_path.read_text()
        acme = psql(port, "alice", "alice-demo", "acme", "SELECT DISTINCT tenant_id FROM todos")
        assert acme.returncode == 0, acme.stderr
        assert acme.stdout.split() == ["11111111-1111-4111-8111-111111111111"]
        globex = psql(port, "bob.globex", "bob-demo", "demo", "SELECT DISTINCT tenant_id FROM todos")
        assert globex.stdout.split() == ["22222222-2222-4222-8222-222222222222"], globex.stderr
        plain = psql(port, "alice", "alice-demo", "acme", "SELECT 1")
        console = psql(port, "admin", "admin-demo", "proxy", "SHOW TENANTS")
        assert console.returncode == 0, console.stderr
        assert {line.split("|")[0] for line in console.stdout.splitlines()} == {"acme", "globex"}
        assert plain.returncode == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 2755}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'tenant_proxy_transactions_total{tenant="11111111-1111-4111-8111-111111111111"}' in text
        # TLS is required: a plain connection is refused
        with h.RawConn("127.0.0.1", port) as raw:
            try:
                raw.startup("alice", "alice-demo", "acme")
                raise AssertionError("a plain connection was accepted")
            except h.PGError as exc:
                assert exc.sqlstate == "28000", exc.fields
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=120)
    assert rc == 0, out_path.read_text()[-2000:]
    shutil.rmtree(tmp_path, ignore_errors=True)
