"""Checks of the deployment files in deploy/: systemd units, the container build, the
Kubernetes manifests and the configuration they carry, and deploy/SCALING.md.

Nothing here needs a daemon, a cluster or the network. The files are checked with the tools
that read them, where these are installed: systemd-analyze (verify, security, syscall-filter),
kubectl (kustomize), kubernetes-validate (the API schemas) and the built tenant-proxy binary
(check-config, the command lines, and a traced run that shows the binary keeps to the unit's
sandbox). The container is not built: its Containerfile is parsed and cross-checked.

    python3 -m pytest -q Tests/integration/test_deploy_files.py

Environment: TENANT_PROXY_BIN (default .build/debug/tenant-proxy), as for the other tests.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

import pgharness as h

REPO = h.REPO_ROOT
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNITS = ["tenant-proxy.service", "tenant-proxy@.service"]
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"
K8S = DEPLOY / "k8s"
K8S_FILES = ["configmap.yaml", "secret.yaml", "deployment.yaml", "service.yaml", "pdb.yaml",
             "hpa.yaml"]
SCALING = DEPLOY / "SCALING.md"

INSTALLED_BIN = "/usr/local/bin/tenant-proxy"
CONF_DIR = "/etc/tenant-proxy"
# The client count the units and manifests are sized for (proxy.conf.example's default).
DESIGN_CLIENTS = 10_000


def example_config() -> dict:
    return tomllib.loads((REPO / "proxy.conf.example").read_text())


def default_shutdown_timeout() -> int:
    return int(example_config()["server"]["shutdown_timeout_seconds"])


def proxy_binary() -> Path:
    binary = h.proxy_bin()
    if not binary.exists():
        pytest.fail(f"tenant-proxy binary not found at {binary} "
                    "(run `swift build` or set TENANT_PROXY_BIN)")
    return binary


# ---------------------------------------------------------------------------------------------
# systemd


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}, keeping repeated keys in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    logical, pending = [], ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        logical.append(line)
    for line in logical:
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: dict, section: str, key: str) -> str:
    values = unit_values(unit, section, key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def is_yes(value: str) -> bool:
    return value.lower() in ("yes", "true", "1", "on")


def seconds(value: str) -> float:
    """systemd time span: 45, 45s, 1min 30s, 2m, 500ms."""
    units = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "ms": 0.001, "msec": 0.001,
             "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip()):
        assert unit in units, f"unknown time unit in {value!r}"
        total += float(number) * units[unit]
    return total


def load_unit(name: str) -> dict:
    return parse_unit((SYSTEMD / name).read_text())


def config_path_of(name: str) -> str:
    return f"{CONF_DIR}/%i.conf" if "@" in name else f"{CONF_DIR}/proxy.conf"


def unit_copy_with_real_binary(name: str, tmp_path: Path) -> Path:
    """The unit with the installed path replaced by the built binary (absent here)."""
    text = (SYSTEMD / name).read_text().replace(INSTALLED_BIN, str(proxy_binary().resolve()))
    out = tmp_path / "units" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return out


def need_systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    return tool


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_verifies(name, tmp_path):
    """systemd-analyze verify: no unknown or misspelt directive, no bad value, ExecStart and
    ExecStartPre executable. It exits 0 on unknown keys, so its messages are read too."""
    tool = need_systemd_analyze()
    unit = unit_copy_with_real_binary(name, tmp_path)
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "tenant-proxy" in line]
    assert res.returncode == 0 and not ours, f"systemd-analyze verify {name}:\n" + \
        (res.stdout + res.stderr)


HARDENING_YES = ["NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                 "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                 "ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
                 "MemoryDenyWriteExecute"]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_directives(name):
    unit = load_unit(name)
    svc = "Service"
    conf = config_path_of(name)
    assert unit_value(unit, svc, "Type") in ("exec", "simple")
    assert shlex.split(unit_value(unit, svc, "ExecStart")) == [INSTALLED_BIN, "run", "--config", conf]
    assert unit_value(unit, svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value(unit, svc, "KillSignal") == "SIGTERM"
    timeout = seconds(unit_value(unit, svc, "TimeoutStopSec"))
    assert timeout > default_shutdown_timeout(), \
        "TimeoutStopSec must leave the drain its shutdown_timeout_seconds before SIGKILL"
    assert unit_value(unit, svc, "Restart") == "on-failure"
    dynamic = is_yes((unit_values(unit, svc, "DynamicUser") or ["no"])[-1])
    assert dynamic or (unit_value(unit, svc, "User") and unit_value(unit, svc, "Group")), \
        "runs as a dedicated user"
    assert unit_value(unit, svc, "User") != "root"
    for key in HARDENING_YES:
        assert is_yes(unit_value(unit, svc, key)), f"{key}=yes"
    assert unit_value(unit, svc, "ProtectSystem") == "strict"
    assert unit_value(unit, svc, "ProtectHome") in ("yes", "true", "read-only", "tmpfs")
    assert unit_value(unit, svc, "RestrictNamespaces") in ("yes", "true")
    assert set(unit_value(unit, svc, "RestrictAddressFamilies").split()) == \
        {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit_value(unit, svc, "SystemCallArchitectures") == "native"
    allow = [v for v in unit_values(unit, svc, "SystemCallFilter") if not v.startswith("~")]
    assert allow and "@system-service" in allow[0].split()
    # Empty: no capabilities at all (ports 6432 and 9187 need none).
    assert unit_value(unit, svc, "CapabilityBoundingSet") == ""
    assert unit_value(unit, svc, "AmbientCapabilities") == ""
    assert "tenant-proxy" in unit_value(unit, svc, "ConfigurationDirectory").split()
    nofile = int(unit_value(unit, svc, "LimitNOFILE").split(":")[-1])
    assert nofile >= 2 * DESIGN_CLIENTS + 1024, "a client and its upstream connection: 2 fds"
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"


def test_systemd_template_is_the_service_per_instance():
    """The template differs from the single unit only in the per-instance names."""
    single, template = load_unit(UNITS[0]), load_unit(UNITS[1])

    def normalized(unit):
        return {sec: [(k, v.replace("%i.conf", "proxy.conf")) for k, v in kv
                      if k not in ("Description", "DefaultInstance")]
                for sec, kv in unit.items()}
    assert normalized(single) == normalized(template)
    assert "%i" in unit_value(template, "Unit", "Description")


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_commands_parse(name):
    """ExecStart and ExecStartPre are command lines the binary accepts: given a config file
    that does not exist, it reports that file, not a usage error."""
    binary = proxy_binary()
    unit = load_unit(name)
    missing = "/nonexistent-tenant-proxy-dir/x.conf"
    for key in ("ExecStartPre", "ExecStart"):
        for value in unit_values(unit, "Service", key):
            argv = shlex.split(value.lstrip("-@:+!"))
            if argv[0] != INSTALLED_BIN:
                continue
            argv = [str(binary)] + [missing if a.startswith(CONF_DIR) else a for a in argv[1:]]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            out = res.stdout + res.stderr
            assert res.returncode not in (0, 64) and "Usage:" not in out, f"{key}: {out}"
            assert missing in out and "cannot be read" in out, f"{key}: {out}"


def test_systemd_sysusers_creates_the_unit_user(tmp_path):
    """deploy/systemd/tenant-proxy.sysusers makes the User=/Group= the units run as
    (systemd-sysusers --dry-run into an empty root)."""
    tool = shutil.which("systemd-sysusers")
    if not tool:
        pytest.skip("systemd-sysusers not installed (apt-get install systemd)")
    (tmp_path / "etc").mkdir()
    res = subprocess.run([tool, f"--root={tmp_path}", "--dry-run",
                          str(SYSTEMD / "tenant-proxy.sysusers")], capture_output=True,
                         text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    unit = load_unit(UNITS[0])
    user, group = unit_value(unit, "Service", "User"), unit_value(unit, "Service", "Group")
    assert f"Creating user '{user}'" in out and f"Creating group '{group}'" in out, out


def test_systemd_security_exposure(tmp_path):
    """systemd's own score of the sandbox: OK or better."""
    tool = need_systemd_analyze()
    unit = unit_copy_with_real_binary(UNITS[0], tmp_path)
    res = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SYSTEMD_COLORS": "0"})
    if "--offline" in res.stderr and "unrecognized" in res.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) in ("SAFE", "OK"), res.stdout


def syscall_groups(tool: str) -> dict[str, list[str]]:
    out = subprocess.run([tool, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups[name], groups)
        else:
            out.add(name)
    return out


def allowed_syscalls(unit: dict, groups: dict[str, list[str]]) -> set[str]:
    allowed: set[str] | None = None
    for value in unit_values(unit, "Service", "SystemCallFilter"):
        if value.startswith("~"):
            assert allowed is not None, "deny list before the allow list"
            allowed -= expand(value[1:].split(), groups)
        else:
            names = expand(value.split(), groups)
            allowed = names if allowed is None else allowed | names
    assert allowed is not None
    return allowed


def child_of(pid: int) -> int:
    """The (one) child process of pid: strace's tracee."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                return int(stat.parent.name)
    raise AssertionError(f"no child of {pid}")


@pytest.fixture
def traced_run(tmp_path):
    """The proxy run under strace through a life like a service's: start, a TLS client that
    logs in (trust) and makes it resolve and dial an upstream by name (refused), SIGHUP,
    SIGTERM. Returns the strace lines."""
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace not installed (apt-get install strace)")
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl not installed")
    binary = proxy_binary()
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(tmp_path / "server.key"), "-out", str(tmp_path / "server.crt"),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True,
                   timeout=60)
    port, dead_port = h.free_port(), h.free_port()
    (tmp_path / "proxy.conf").write_text(f"""
[server]
listen_host = "127.0.0.1"
listen_port = {port}
shutdown_timeout_seconds = 2
[tls]
cert_file = "server.crt"
key_file = "server.key"
[auth]
trust_loopback = true
[upstream]
host = "localhost"
port = {dead_port}
user = "tenant_proxy"
password = "unused"
connect_timeout_seconds = 2
""")
    (tmp_path / "tenants.toml").write_text(
        f'[users.admin]\nmode = "global"\npassword = "{h.scram_verifier("x")}"\n')
    trace = tmp_path / "trace"
    log = open(tmp_path / "proxy.log", "w")
    proc = subprocess.Popen([strace, "-f", "-qq", "-o", str(trace), str(binary), "run",
                             "--config", str(tmp_path / "proxy.conf")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        h.wait_until(lambda: h.port_accepts("127.0.0.1", port), 60, "traced proxy listening")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            raw.sendall(struct.pack("!II", 8, 80877103))
            assert raw.recv(1) == b"S"
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(h.startup_packet({"user": "admin", "database": "app"}))
                reply = b""
                with contextlib.suppress(OSError):
                    while chunk := tls.recv(65536):
                        reply += chunk
        assert b"08006" in reply, reply  # reached the (dead) upstream
        tracee = child_of(proc.pid)
        os.kill(tracee, signal.SIGHUP)
        h.wait_until(lambda: "tenant map reloaded" in (tmp_path / "proxy.log").read_text(), 30,
                     "reload on SIGHUP")
        os.kill(tracee, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        h.kill_process_group(proc)
        log.close()
    assert "stopped" in (tmp_path / "proxy.log").read_text()
    return trace.read_text().splitlines()


def test_binary_keeps_to_the_unit_sandbox(traced_run):
    """What the traced proxy did is allowed by the unit: every system call is in the
    SystemCallFilter (expanded by systemd-analyze), no memory is mapped writable and
    executable or made executable later (MemoryDenyWriteExecute), and sockets are of the
    RestrictAddressFamilies families."""
    tool = need_systemd_analyze()
    unit = load_unit(UNITS[0])
    allowed = allowed_syscalls(unit, syscall_groups(tool))
    used = set()
    for line in traced_run:
        m = re.match(r"\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
        if m:
            used.add(m.group(1))
    assert {"accept4", "connect", "read", "write"} <= used, "the trace saw the traffic"
    assert not used - allowed - {"execve"}, \
        f"system calls outside SystemCallFilter: {sorted(used - allowed)}"

    wx = [line for line in traced_run
          if re.search(r"\b(mmap|mprotect|pkey_mprotect)\(", line) and "PROT_EXEC" in line
          and ("PROT_WRITE" in line or "mprotect(" in line)]
    assert not wx, "writable+executable or re-protected executable memory:\n" + "\n".join(wx[:5])

    families = set(unit_value(unit, "Service", "RestrictAddressFamilies").split())
    used_families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", "\n".join(traced_run)))
    # glibc's getaddrinfo asks the kernel for the interface list over netlink and, when that
    # socket is refused, assumes IPv4 and IPv6 are both configured: harmless under the filter.
    assert used_families - {"AF_NETLINK"} <= families, used_families


# ---------------------------------------------------------------------------------------------
# Containerfile and .dockerignore


def parse_containerfile(text: str) -> list[dict]:
    """Instructions in order: {"cmd", "args" (raw text), "stage" (index)}."""
    instructions, stage, buf = [], -1, ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        line = (buf + stripped).strip()
        buf = ""
        cmd, _, args = line.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            stage += 1
        instructions.append({"cmd": cmd, "args": args.strip(), "stage": stage})
    assert not buf, "a continued line at the end of the file"
    return instructions


def stage_names(instrs: list[dict]) -> dict[str, int]:
    names = {}
    for ins in instrs:
        if ins["cmd"] == "FROM":
            parts = ins["args"].split()
            if len(parts) == 3 and parts[1].upper() == "AS":
                names[parts[2]] = ins["stage"]
    return names


def exec_form(ins: dict) -> list[str]:
    value = json.loads(ins["args"])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), ins
    return value


@pytest.fixture(scope="module")
def containerfile() -> list[dict]:
    return parse_containerfile(CONTAINERFILE.read_text())


def test_containerfile_builder_builds_the_product(containerfile):
    froms = [i for i in containerfile if i["cmd"] == "FROM"]
    assert len(froms) >= 2, "multi-stage: a Swift builder and a slim runtime"
    assert froms[0]["args"].split()[0].startswith("swift:")
    assert froms[-1]["args"].split()[0].startswith("debian:") and "slim" in froms[-1]["args"]
    products = re.findall(r'\.executable\(\s*name:\s*"([^"]+)"', (REPO / "Package.swift").read_text())
    assert "tenant-proxy" in products
    build = [i["args"] for i in containerfile if i["cmd"] == "RUN" and "swift build" in i["args"]]
    assert build, "a RUN with swift build"
    assert all(s in build[0] for s in ("scripts/build-release.sh", "--static-swift-stdlib",
                                       "--product tenant-proxy")), build[0]
    # The script it runs is copied into the build stage, and builds in release.
    copied = " ".join(i["args"] for i in containerfile if i["cmd"] == "COPY" and "--from=" not in i["args"])
    assert "scripts/build-release.sh" in copied
    assert "swift build -c release" in (REPO / "scripts" / "build-release.sh").read_text()
    # What the runtime stage copies out of the builder is what the builder produced.
    names = stage_names(containerfile)
    copies = [i for i in containerfile if i["cmd"] == "COPY" and "--from=" in i["args"]]
    assert copies
    for ins in copies:
        parts = ins["args"].split()
        source_stage = parts[0].split("=", 1)[1]
        assert source_stage in names and names[source_stage] < ins["stage"], ins
        src = parts[1]
        produced = " ".join(i["args"] for i in containerfile
                            if i["stage"] == names[source_stage] and i["cmd"] == "RUN")
        assert src in produced, f"{src} is not made by stage {source_stage}"


def test_containerfile_runtime_stage(containerfile):
    last = max(i["stage"] for i in containerfile)
    runtime = [i for i in containerfile if i["stage"] == last]
    users = [i["args"] for i in runtime if i["cmd"] == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) > 0)
    assert user.isdigit(), "numeric USER, so Kubernetes' runAsNonRoot can check it"
    exposed = {p.split("/")[0] for i in runtime if i["cmd"] == "EXPOSE" for p in i["args"].split()}
    assert {"6432", "9187"} <= exposed
    entry = [i for i in runtime if i["cmd"] == "ENTRYPOINT"]
    assert entry
    argv = exec_form(entry[-1])
    assert Path(argv[0]).name == "tenant-proxy" and argv[1:3] == ["run", "--config"], argv
    assert argv[3] == f"{CONF_DIR}/proxy.conf"
    stop = [i["args"] for i in runtime if i["cmd"] == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])
    installs = " ".join(i["args"] for i in runtime if i["cmd"] == "RUN")
    # FoundationNetworking (JWKS fetches) links libcurl even with --static-swift-stdlib.
    assert "ca-certificates" in installs and "libcurl4" in installs


def test_containerfile_entrypoint_is_a_valid_command(containerfile):
    argv = exec_form([i for i in containerfile if i["cmd"] == "ENTRYPOINT"][-1])
    missing = "/nonexistent-tenant-proxy-dir/proxy.conf"
    res = subprocess.run([str(proxy_binary())] + argv[1:-1] + [missing], capture_output=True,
                         text=True, timeout=30)
    out = res.stdout + res.stderr
    assert res.returncode not in (0, 64) and missing in out and "cannot be read" in out, out


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        status = 200 if self.path == "/healthz" and self.server.healthy else 503
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


def test_containerfile_healthcheck_command(containerfile):
    """The HEALTHCHECK (bash /dev/tcp, no curl in the image) passes on 200 from /healthz and
    fails on 503 and on a closed port. Run here against a stand-in server on another port."""
    checks = [i for i in containerfile if i["cmd"] == "HEALTHCHECK"]
    if not checks:
        pytest.skip("no HEALTHCHECK (Kubernetes probes only)")
    bash = shutil.which("bash")
    assert bash
    args = checks[-1]["args"]
    argv = exec_form({"args": args[args.index("CMD") + 3:].strip()})
    server = HTTPServer(("127.0.0.1", 0), _Healthz)
    server.healthy = True
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def run(p):
            cmd = [a.replace("/127.0.0.1/9187", f"/127.0.0.1/{p}") for a in argv]
            assert cmd != argv, "the check targets 127.0.0.1:9187"
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).returncode
        assert run(port) == 0
        server.healthy = False
        assert run(port) != 0
        assert run(h.free_port()) != 0
    finally:
        server.shutdown()
        server.server_close()


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.lstrip("/") for line in lines if line and not line.startswith("#")]


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is excluded when a pattern matches it or one of its parents;
    later '!' patterns re-include."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pats = {pat, pat[3:]} if pat.startswith("**/") else {pat}
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in pats):
            ignored = not negate
    return ignored


def test_dockerignore_excludes_local_trees_but_not_the_sources(containerfile):
    patterns = dockerignore_patterns()
    for path in (".build", ".build/debug/tenant-proxy", ".build-bench/x", ".build_linux",
                 ".demo/proxy.conf", ".git", ".git/HEAD"):
        assert docker_ignored(path, patterns), f"{path} is sent to the builder"
    # Every COPY from the build context finds its files.
    for ins in containerfile:
        if ins["cmd"] != "COPY" or "--from=" in ins["args"]:
            continue
        sources = [a for a in ins["args"].split()[:-1] if not a.startswith("--")]
        for src in sources:
            matches = [p for p in REPO.glob(src)]
            files = [m for m in matches for m in ([m] if m.is_file() else m.rglob("*"))
                     if m.is_file()]
            kept = [f for f in files if not docker_ignored(str(f.relative_to(REPO)), patterns)]
            assert kept, f"COPY {src}: nothing in the build context"
    for path in ("Package.swift", "Sources/TenantProxy/Commands/TenantProxyCommand.swift",
                 "proxy.conf.example"):
        assert not docker_ignored(path, patterns), path


# ---------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def one(k8s, kind: str) -> dict:
    found = [d for docs in k8s.values() for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def configmap_files(k8s) -> dict[str, str]:
    return one(k8s, "ConfigMap")["data"]


def proxy_conf(k8s) -> dict:
    return tomllib.loads(configmap_files(k8s)["proxy.conf"])


def pod_spec(k8s) -> dict:
    return one(k8s, "Deployment")["spec"]["template"]["spec"]


def container(k8s) -> dict:
    containers = pod_spec(k8s)["containers"]
    assert len(containers) == 1
    return containers[0]


def test_k8s_every_file_parses(k8s):
    names = set(k8s)
    assert set(K8S_FILES) | {"kustomization.yaml"} <= names
    for name, docs in k8s.items():
        assert docs, f"{name} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), name
            assert doc.get("metadata", {}).get("name") or doc["kind"] == "Kustomization", name


def test_k8s_objects_match_the_api_schemas(k8s):
    """Strict validation against the Kubernetes OpenAPI schemas: a misspelt or misplaced
    field fails (kubernetes-validate ships the schemas; no cluster needed)."""
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate not installed (pip install kubernetes-validate)")
    versions = {kv.latest_version()}
    versions |= {v for v in kv.utils.all_versions() if v.startswith("1.27.")}
    for version in sorted(versions):
        for name in K8S_FILES:
            for doc in k8s[name]:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as exc:
                    pytest.fail(f"{name} {doc['kind']} against {version}: {exc.message} "
                                f"at {list(exc.absolute_path)}")


def test_k8s_deployment(k8s):
    dep = one(k8s, "Deployment")
    spec, pod, c = dep["spec"], pod_spec(k8s), container(k8s)
    conf = proxy_conf(k8s)
    assert spec["replicas"] >= 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert c["image"].split(":")[0].endswith("tenant-proxy")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["postgres"] == conf["server"]["listen_port"] == 6432
    assert ports["metrics"] == conf["metrics"]["listen_port"] == 9187
    assert conf["server"]["listen_host"] == "0.0.0.0" and conf["metrics"]["listen_host"] == "0.0.0.0"

    def probe_port(probe):
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(c["readinessProbe"]) == probe_port(c["livenessProbe"]) == 9187

    ann = spec["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9187"
    assert ann.get("prometheus.io/path", "/metrics") == "/metrics"

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind

    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc.get("runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot")) is True
    assert not sc.get("privileged", False)

    shutdown = conf["server"].get("shutdown_timeout_seconds", default_shutdown_timeout())
    assert pod["terminationGracePeriodSeconds"] > shutdown
    assert "preStop" not in c.get("lifecycle", {}), "SIGTERM drains; no preStop hook"
    assert pod.get("topologySpreadConstraints") or pod.get("affinity", {}).get("podAntiAffinity")
    for tsc in pod.get("topologySpreadConstraints", []):
        assert tsc["labelSelector"]["matchLabels"].items() <= labels.items()


def projected_files(k8s) -> dict[str, tuple[str, str, str]]:
    """Files the Deployment mounts: absolute path -> (kind, object name, key)."""
    c, pod = container(k8s), pod_spec(k8s)
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {}
    for mount in c["volumeMounts"]:
        vol = volumes[mount["name"]]
        root = mount["mountPath"].rstrip("/")
        sources = []
        if "projected" in vol:
            sources = vol["projected"]["sources"]
        elif "configMap" in vol:
            sources = [{"configMap": vol["configMap"]}]
        elif "secret" in vol:
            sources = [{"secret": {**vol["secret"], "name": vol["secret"]["secretName"]}}]
        for src in sources:
            for kind, ref in src.items():
                if kind not in ("configMap", "secret"):
                    continue
                for item in ref["items"]:
                    files[f"{root}/{item['path']}"] = (kind, ref["name"], item["key"])
    return files


def object_data(k8s, kind: str, name: str) -> dict[str, str]:
    objs = [d for docs in k8s.values() for d in docs
            if d.get("kind", "").lower() == kind.lower() and d["metadata"]["name"] == name]
    assert objs, f"{kind} {name} is mounted but not defined in deploy/k8s"
    return {**objs[0].get("data", {}), **objs[0].get("stringData", {})}


def test_k8s_mounts_reference_existing_objects_and_keys(k8s):
    files = projected_files(k8s)
    kinds = {kind for kind, _, _ in files.values()}
    assert kinds == {"configMap", "secret"}
    for path, (kind, name, key) in files.items():
        assert key in object_data(k8s, kind, name), f"{path}: {kind} {name} has no key {key}"
        assert path.startswith(CONF_DIR + "/")
    assert files[f"{CONF_DIR}/proxy.conf"][0] == "configMap", "the image's ENTRYPOINT reads it"
    mounts = {m["mountPath"]: m for m in container(k8s)["volumeMounts"]}
    assert mounts[CONF_DIR].get("readOnly") is True


CONFIG_FILE_KEYS = re.compile(r"(_file|_files)$")


def config_file_paths(conf: dict) -> list[tuple[str, str]]:
    """(dotted key, path) of every file the config names."""
    out = []

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(f"{prefix}[{i}]", v)
        elif isinstance(node, str) and node and CONFIG_FILE_KEYS.search(prefix.split(".")[-1]):
            out.append((prefix, node))
    walk("", conf)
    return out


def test_k8s_config_names_only_mounted_files(k8s):
    """Every file proxy.conf names is one the pod mounts (and the tenant map is there)."""
    files = projected_files(k8s)
    conf = proxy_conf(k8s)
    named = config_file_paths(conf)
    assert {k for k, _ in named} >= {"tls.cert_file", "tls.key_file", "tenancy.map_file",
                                     "upstream.password_file"}
    for key, path in named:
        full = path if path.startswith("/") else f"{CONF_DIR}/{path}"
        assert full in files, f"{key} = {path}: not mounted"
    assert files[f"{CONF_DIR}/tls/tls.crt"][0] == "secret"
    assert files[f"{CONF_DIR}/tls/tls.key"][0] == "secret"
    assert files[conf["upstream"]["password_file"]][0] == "secret"


def test_k8s_config_values(k8s):
    conf = proxy_conf(k8s)
    tenants = tomllib.loads(configmap_files(k8s)["tenants.toml"])
    assert conf["pool"]["mode"] == "transaction"
    assert conf["tls"].get("require", True) is True
    assert conf["upstream"]["host"].endswith(".svc") or ".svc." in conf["upstream"]["host"]
    assert "password" not in conf["upstream"], "the password comes from the Secret"
    assert conf["log"]["format"] == "json"
    assert conf["metrics"]["listen_port"] == 9187
    for admin in conf["admin"]["users"]:
        assert admin in tenants["users"], f"[admin] user {admin} is not in tenants.toml"


def test_k8s_secret_holds_marked_placeholders(k8s):
    secret = one(k8s, "Secret")
    assert "stringData" in secret and not secret.get("data")
    assert {"tls.crt", "tls.key", "upstream-password"} <= set(secret["stringData"])
    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"{key} does not look like a placeholder"


def test_k8s_service_pdb_hpa_target_the_deployment(k8s):
    dep = one(k8s, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container(k8s)["ports"]}

    svc = one(k8s, "Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == 6432]
    assert port.get("protocol", "TCP") == "TCP"
    target = port.get("targetPort", port["port"])
    assert (ports[target] if isinstance(target, str) else target) == ports["postgres"]
    # Without [[peers]] a CancelRequest must reach the pod holding the session by itself.
    conf = proxy_conf(k8s)
    if not conf.get("peers") and dep["spec"]["replicas"] > 1:
        assert svc["spec"].get("sessionAffinity") == "ClientIP"

    pdb = one(k8s, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1

    hpa = one(k8s, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"], ref["apiVersion"]) == \
        ("Deployment", dep["metadata"]["name"], dep["apiVersion"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu"
               for m in hpa["spec"]["metrics"])


def test_k8s_kustomization_lists_every_file(k8s):
    (kust,) = k8s["kustomization.yaml"]
    assert kust["kind"] == "Kustomization"
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return
    # kubectl's built-in kustomize builds it offline.
    res = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    import yaml
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(res.stdout) if d}
    expected = {(d["kind"], d["metadata"]["name"]) for name in K8S_FILES for d in k8s[name]}
    assert built == expected


def test_k8s_kubectl_client_dry_run():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    res = subprocess.run([kubectl, "create", "--dry-run=client", "--validate=false", "-k",
                          str(K8S), "-o", "name"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "KUBECONFIG": "/dev/null"})
    if res.returncode != 0 and re.search(r"connection refused|unable to recognize|"
                                         r"couldn't get current server API|no such host",
                                         res.stderr):
        pytest.skip("kubectl create --dry-run=client needs an API server for its type lookup")
    assert res.returncode == 0, res.stderr
    assert "deployment.apps/tenant-proxy" in res.stdout


def materialize_pod_files(k8s, root: Path) -> Path:
    """Writes the files the pod would see under /etc/tenant-proxy into root, with every
    absolute /etc/tenant-proxy path in proxy.conf pointing into root; certificate and key are
    a real self-signed pair (the Secret holds placeholders)."""
    files = projected_files(k8s)
    conf_dir = root / CONF_DIR.lstrip("/")
    for path, (kind, name, key) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = object_data(k8s, kind, name)[key]
        if key == "proxy.conf":
            text = text.replace(f'"{CONF_DIR}/', f'"{conf_dir}/')
        target.write_text(text)
    openssl = shutil.which("openssl")
    if openssl:
        conf = tomllib.loads((conf_dir / "proxy.conf").read_text())
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", conf["tls"]["key_file"], "-out", conf["tls"]["cert_file"],
                        "-days", "2", "-subj", "/CN=tenant-proxy"], check=True,
                       capture_output=True, timeout=60)
    return conf_dir / "proxy.conf"


def test_k8s_configmap_passes_check_config(k8s, tmp_path):
    """The ConfigMap's proxy.conf and tenants.toml, laid out as the pod sees them, pass the
    binary's own check-config (every key known, every named file readable)."""
    conf = materialize_pod_files(k8s, tmp_path)
    assert str(tmp_path) in conf.read_text()
    res = subprocess.run([str(proxy_binary()), "check-config", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------
# SCALING.md


def test_scaling_guide_snippets_and_links():
    text = SCALING.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        tomllib.loads(block)
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (SCALING.parent / target).exists(), f"broken link {target}"
    for term in ("reuse_port", "instance_id", "[[peers]]", "PAUSE", "RESUME", "RELOAD",
                 "tenant_proxy_clients", "tenant_proxy_pool_wait_seconds",
                 "tenant_proxy_transactions_total", "/readyz", "/healthz", "57P01"):
        assert term in text, term


def test_config_examples_pass_check_config(tmp_path):
    """proxy.conf.example and tenants.toml.example, as shipped, are a valid configuration (with
    placeholder certificate files where the example names them)."""
    shutil.copy(REPO / "proxy.conf.example", tmp_path / "proxy.conf")
    shutil.copy(REPO / "tenants.toml.example", tmp_path / "tenants.toml")
    example = tomllib.loads((REPO / "proxy.conf.example").read_text())
    for key in ("cert_file", "key_file"):
        (tmp_path / example["tls"][key]).write_text("placeholder\n")
    res = h.run([str(h.proxy_bin()), "check-config", str(tmp_path / "proxy.conf")], timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stdout + res.stderr
