"""A local user who may write workload files, against the root daemon: the attacks of issue 16.

Each test does what the attacker did: the files and links are made by uid 65534 itself
(``setpriv``), in a directory that user may write, and the real daemon (root) or ``healthd
validate`` reads them. The directories sit under a world-searchable directory in /tmp, as a
real config dir sits under /etc: pytest's own directories are root's alone, and nobody could
plant anything there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.harness import DaemonProc, connect, run_cli, wait_for
from integration.test_http_options import Pki, response, site_in_thread

from . import test_regex_attack as regex_attack
from .targets import canary_keeps_going, start_with_canary

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
RELAX = "or set security.strict_modes: false in the daemon config"


@pytest.fixture(autouse=True)
def _root(require_binary: Callable[[str], str]) -> None:
    """The daemon under attack runs as root, as it does on a host: CI runs as root."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the attacks are made against a root daemon (CI runs as root)")
        pytest.skip("needs root")
    require_binary("setpriv")


@pytest.fixture
def victim(public_dir: Path, tmp_path: Path, env: dict[str, str]) -> Iterator[DaemonProc]:
    """The root daemon, its config dir in ``public_dir`` (given away by each test as it needs)."""
    daemon = DaemonProc(public_dir / "conf", public_dir / "status", env, tmp_path / "daemon.log")
    daemon.config_dir.mkdir(mode=0o755)
    try:
        yield daemon
    finally:
        daemon.kill()


def as_nobody(*argv: str) -> None:
    """Run ``argv`` as uid 65534, as the attacker did; it must succeed."""
    done = subprocess.run(
        [*AS_NOBODY, *argv], check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done


def nobody_writes(path: Path, text: str) -> None:
    as_nobody("sh", "-c", 'printf %s "$1" > "$2"', "sh", text, str(path))


def give_away(directory: Path, how: str) -> None:
    """Let uid 65534 write ``directory``: owning it, or by the group of a root-owned one."""
    if how == "owned":
        os.chown(directory, NOBODY, NOBODY)
    else:
        os.chown(directory, 0, NOBODY)
        directory.chmod(0o775)


def everything_shown(daemon: DaemonProc) -> str:
    """What any local user reads: the API's workloads and events, the log, every byte of
    the status dir (events.db and its WAL included)."""
    api = connect(daemon)
    shown = [api.call("GET", path).text for path in ("/v1/workloads", "/v1/events", "/v1/status")]
    shown.append(daemon.log())
    for path in sorted(daemon.status_dir.iterdir()):
        shown.append(path.read_bytes().decode("latin-1"))
    return "\n".join(shown)


@pytest.mark.parametrize("how", ["owned", "group-writable"])
def test_a_link_to_etc_shadow_publishes_nothing_of_it(victim: DaemonProc, how: str) -> None:
    """``ln -s /etc/shadow conf/sys.yaml`` by a user who may write the config dir: the root
    daemon used to read /etc/shadow and quote each line back as an unknown key in the API,
    events.db and the log. A root-only file of ``key: value`` lines leaked its keys and the
    values quoted back. Now neither is read: the user could not read them."""
    secret_dir = victim.config_dir.parent / "private"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "settings.yaml"
    secret.write_text("port: hunter2-in-a-value\nhunter3_as_a_key: 1\n")
    secret.chmod(0o600)
    give_away(victim.config_dir, how)
    as_nobody("ln", "-s", "/etc/shadow", str(victim.config_dir / "sys.yaml"))
    as_nobody("ln", "-s", str(secret), str(victim.config_dir / "settings.yaml"))
    victim.start()
    wait_for("two config errors", lambda: len(victim.events("config_error")) >= 2 or None)
    shown = everything_shown(victim)
    shadow = [line for line in Path("/etc/shadow").read_text().splitlines() if line.strip()]
    assert shadow, "/etc/shadow has lines to leak"
    for line in shadow:
        assert line not in shown
        assert line.split(":", 1)[1][:16] not in shown
    assert "hunter2" not in shown
    assert "hunter3" not in shown
    who = f"uid {NOBODY}" if how == "owned" else f"members of gid {NOBODY}"
    theirs = (
        f"directory {victim.config_dir} is theirs"
        if how == "owned"
        else f"they may write directory {victim.config_dir}"
    )
    assert (
        f"{victim.config_dir}/sys.yaml: not read: {who} may not read /etc/shadow, yet could "
        f"have led healthd there: {theirs}"
    ) in shown
    assert (
        f"{victim.config_dir}/settings.yaml: not read: {who} may not search {secret_dir}, yet "
        f"could have led healthd there: {theirs}"
    ) in shown
    assert victim.terminate() == 0


def test_a_flipped_link_never_gets_an_exec_check_of_theirs_run_by_root(
    victim: DaemonProc,
) -> None:
    """Root's ``conf/job.yaml -> /home/u/link.yaml``, and u flips ``link.yaml`` between u's
    own exec workload and /etc/passwd while reloads happen. The file used to be read first
    and its path judged again afterwards: root ran u's command after a few reloads. Now the
    walk that reads it is the walk judged, and u's directory and link are on it."""
    home = victim.config_dir.parent / "home"
    home.mkdir(mode=0o755)
    os.chown(home, NOBODY, NOBODY)
    pwned = victim.config_dir.parent / "pwned"
    (victim.config_dir / "job.yaml").symlink_to(home / "link.yaml")  # root's link
    (victim.config_dir / "canary.yaml").write_text(
        "workload: canary\ntype: exec\ncommand: ['true']\ninterval: 100ms\n"
    )
    nobody_writes(
        home / "job-exec.yaml",
        f"workload: job\ntype: exec\ncommand: [touch, '{pwned}']\ninterval: 50ms\n",
    )
    as_nobody("ln", "-s", "/etc/passwd", str(home / "passwd-link"))
    as_nobody("ln", "-s", str(home / "job-exec.yaml"), str(home / "exec-link"))
    as_nobody("cp", "-P", str(home / "passwd-link"), str(home / "link.yaml"))
    # the attacker's flipper: rename each ready-made link over link.yaml, as fast as it can
    flipper = subprocess.Popen(
        [
            *AS_NOBODY,
            "python3",
            "-c",
            "import os,sys,time\n"
            "home=sys.argv[1]; end=time.monotonic()+float(sys.argv[2]); i=0\n"
            "while time.monotonic()<end:\n"
            "    src=('exec-link','passwd-link')[i%2]; i+=1\n"
            "    os.symlink(os.readlink(os.path.join(home,src)),os.path.join(home,'next'))\n"
            "    os.rename(os.path.join(home,'next'),os.path.join(home,'link.yaml'))\n",
            str(home),
            "8",
        ],
    )
    try:
        victim.start()
        victim.wait_status("canary", lambda s: s["healthy"])
        reloads = 0
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline and not pwned.exists():
            count = len(victim.events("config_reloaded"))
            os.kill(victim.pid, signal.SIGHUP)
            wait_for(
                "a reload",
                lambda count=count: len(victim.events("config_reloaded")) > count or None,  # type: ignore[misc]
            )
            reloads += 1
            time.sleep(0.1)  # long enough for a loaded exec check to run at 50ms
    finally:
        flipper.kill()
        flipper.wait()
    assert not pwned.exists(), f"root ran the attacker's command within {reloads} reloads"
    assert reloads >= 20, reloads
    refused = [line for line in victim.events("config_error") if "job.yaml" in line]
    assert refused, victim.log()
    fault = f"directory {home} is owned by uid {NOBODY}, not root; fix: chown root {home}"
    assert any(fault in line for line in refused), refused
    assert victim.terminate() == 0


def test_validate_refuses_a_chain_whose_second_link_is_theirs(
    victim: DaemonProc, public_dir: Path
) -> None:
    """``conf/job.yaml -> /home/u/link.yaml -> /etc/.../job.yaml``: the first link and the
    file are root's, in root's directories, but u may point the second anywhere."""
    real = public_dir / "real"
    real.mkdir(mode=0o755)
    (real / "job.yaml").write_text("workload: job\ntype: exec\ncommand: ['true']\n")
    home = public_dir / "home"
    home.mkdir(mode=0o755)
    os.chown(home, NOBODY, NOBODY)
    as_nobody("ln", "-s", str(real / "job.yaml"), str(home / "link.yaml"))
    (victim.config_dir / "job.yaml").symlink_to(home / "link.yaml")
    done = run_cli(["validate", "--config-dir", str(victim.config_dir)], victim.env)
    assert (done.returncode, done.stdout) == (
        1,
        f"{victim.config_dir}/job.yaml: refused: healthd runs as root and will not run an "
        f"exec check from a file that others could change: directory {home} is owned by uid "
        f"{NOBODY}, not root; fix: chown root {home}, {RELAX}\n",
    )


def test_auto_restart_from_their_file_restarts_nothing(
    victim: DaemonProc, public_dir: Path
) -> None:
    """An untrusted tcp file with ``auto_restart: true`` and no ``restart_command``, named
    after any container, on a closed port: root used to run ``systemctl restart
    volt-container@NAME.service`` about once a second. The systemctl here is a stand-in
    that writes down each call."""
    bin_dir = public_dir / "bin"
    bin_dir.mkdir(mode=0o755)
    calls = public_dir / "systemctl-calls"
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    systemctl.chmod(0o755)
    victim.env["PATH"] = f"{bin_dir}:{victim.env['PATH']}"
    give_away(victim.config_dir, "owned")
    nobody_writes(
        victim.config_dir / "payments.yaml",
        "workload: payments\ntype: tcp\nhost: 127.0.0.1\nport: 9\ninterval: 200ms\n"
        "timeout: 200ms\nretries: 1\nauto_restart: true\nrestart_delay: 1s\n",
    )
    file = victim.config_dir / "payments.yaml"
    expected = (
        f"{file}: refused: healthd runs as root and will not run a restart (auto_restart: true "
        f"runs systemctl restart) from a file that others could change: directory "
        f"{victim.config_dir} is owned by uid {NOBODY}, not root; fix: chown root "
        f"{victim.config_dir}, {RELAX}"
    )
    done = run_cli(["validate", "--config-dir", str(victim.config_dir)], victim.env)
    assert (done.returncode, done.stdout) == (1, expected + "\n")
    victim.start()
    (line,) = victim.wait_event("config_error")
    assert f'problem="{expected}"' in line
    time.sleep(3.0)  # retries 1 at 200ms and restart_delay 1s: two restarts, were it loaded
    assert not calls.exists(), calls.read_text()
    assert victim.status("payments") is None
    assert victim.terminate() == 0


@pytest.fixture
def root_keys(public_dir: Path) -> Pki:
    """The host's identity: a client certificate and key only root may read (0600, in a
    0700 directory), as /etc/ssl/private holds them."""
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    return Pki(private)


def test_roots_client_key_is_not_lent_to_their_file(victim: DaemonProc, root_keys: Pki) -> None:
    """An http workload in u's file names root-only client_cert/client_key and ca_file, and
    picks method, path and host: root used to authenticate as the host to an mTLS admin API
    with ``DELETE /admin/users/alice`` and quote the answer in ``last_error``. Now the files
    are read only as far as u could read them: nothing is sent."""
    context = root_keys.server_context(require_client_cert=True)
    answer = response(200, b"user alice deleted")
    with site_in_thread({"/admin/users/alice": answer}, tls_context=context) as admin:
        give_away(victim.config_dir, "owned")
        nobody_writes(
            victim.config_dir / "admin.yaml",
            f"workload: admin\ntype: http\nscheme: https\nhost: 127.0.0.1\nport: {admin.port}\n"
            f"method: DELETE\ntarget: /admin/users/alice\ninterval: 200ms\n"
            f"ca_file: {root_keys.ca_file}\nclient_cert: {root_keys.client_cert}\n"
            f"client_key: {root_keys.client_key}\n",
        )
        victim.start()
        # either the refusal, or the request the attack was after
        wait_for("a config error or a request", lambda: victim.events("config_error") or admin.seen)
        time.sleep(1.0)
        assert [(s.method, s.target) for s in admin.seen] == []
        assert admin.accepts == 0
        line = "\n".join(victim.events("config_error"))
    shown = everything_shown(victim)
    assert "alice deleted" not in shown
    assert (
        f"ca_file: not read: uid {NOBODY} may not search {root_keys.directory}, and healthd "
        "reads for them"
    ) in line
    assert victim.terminate() == 0


def test_tls_file_errors_tell_them_nothing_they_could_not_see(
    public_dir: Path, root_keys: Pki, tmp_path: Path, env: dict[str, str]
) -> None:
    """The load errors used to tell an unprivileged user whether a root-only file exists and
    whether a key matches a certificate. Now the answer is the same for a real key, a
    missing one and one of another certificate: they may not look there."""
    conf = public_dir / "conf"
    conf.mkdir(mode=0o755)
    os.chown(conf, NOBODY, NOBODY)
    private = root_keys.directory
    cases = {
        "real": (root_keys.client_cert, root_keys.client_key),
        "missing": (root_keys.client_cert, private / "no-such.key"),
        "mismatched": (root_keys.client_cert, root_keys.stranger_client[1]),
        "no-cert": (private / "no-such.pem", root_keys.client_key),
    }
    answers = {}
    for name, (cert, key) in cases.items():
        nobody_writes(
            conf / f"{name}.yaml",
            f"workload: {name}\ntype: http\nscheme: https\nport: 8443\n"
            f"client_cert: {cert}\nclient_key: {key}\n",
        )
        done = run_cli(["validate", "--config-dir", str(conf)], env)
        assert done.returncode == 1
        (conf / f"{name}.yaml").unlink()
        answers[name] = done.stdout.replace(name, "NAME")
    assert len(set(answers.values())) == 1, answers
    assert f"not read: uid {NOBODY} may not search {private}" in answers["real"]
    # and where they may look, they learn what they could see themselves
    private.chmod(0o755)
    nobody_writes(
        conf / "own.yaml",
        f"workload: own\ntype: http\nscheme: https\nport: 8443\n"
        f"client_cert: {root_keys.client_cert}\nclient_key: {root_keys.client_key}\n",
    )
    root_keys.client_cert.chmod(0o644)
    root_keys.client_key.chmod(0o600)
    done = run_cli(["validate", "--config-dir", str(conf)], env)
    assert f"not read: uid {NOBODY} may not read {root_keys.client_key}" in done.stdout


def test_a_flood_of_link_flips_cannot_lend_a_key_at_run_time(
    victim: DaemonProc, root_keys: Pki, public_dir: Path
) -> None:
    """A key u may read at load, swapped afterwards for a link to root's key: each TLS
    context is built from what the walk opens, with u as the reader, so root's key is never
    presented. The server counts the client certificates it is shown."""
    context = root_keys.server_context(require_client_cert=True)
    seen_subjects: list[str] = []
    lock = threading.Lock()

    with site_in_thread({"/": response(200, b"ok")}, tls_context=context) as srv:
        home = public_dir / "home"
        home.mkdir(mode=0o755)
        os.chown(home, NOBODY, NOBODY)
        # u's own pair: a certificate of a CA the server does not trust
        theirs = public_dir / "theirs"
        theirs.mkdir(mode=0o755)
        shutil.copy(root_keys.stranger_client[0], theirs / "cert.pem")
        shutil.copy(root_keys.stranger_client[1], theirs / "key.pem")
        for path in (theirs / "cert.pem", theirs / "key.pem"):
            os.chown(path, NOBODY, NOBODY)
        as_nobody("ln", "-s", str(theirs / "cert.pem"), str(home / "cert.pem"))
        as_nobody("ln", "-s", str(theirs / "key.pem"), str(home / "key.pem"))
        give_away(victim.config_dir, "owned")
        nobody_writes(
            victim.config_dir / "api.yaml",
            f"workload: api\ntype: http\nscheme: https\nhost: 127.0.0.1\nport: {srv.port}\n"
            f"interval: 100ms\ntls_skip_verify: true\n"
            f"client_cert: {home / 'cert.pem'}\nclient_key: {home / 'key.pem'}\n",
        )
        victim.start()
        victim.wait_status("api", lambda s: s["total_fails"] >= 1)  # their pair: refused
        # now the links lead to root's pair, which u may not read
        for name, target in (
            ("cert.pem", root_keys.client_cert),
            ("key.pem", root_keys.client_key),
        ):
            as_nobody("ln", "-sfn", str(target), str(home / name))
        refusal = f"uid {NOBODY} may not search {root_keys.directory}"
        api = connect(victim)

        def outcome() -> dict[str, Any] | None:
            if any(s.peer_cert for s in srv.seen):
                return {"presented": True}  # the attack worked: stop waiting
            status = api.get("/v1/status/api")
            return status if refusal in (status["last_error"] or "") else None

        status = wait_for("the refusal, or root's certificate presented", outcome)
        time.sleep(1.0)  # ten more checks
        with lock:
            seen_subjects.extend(str(s.peer_cert) for s in srv.seen if s.peer_cert)
    assert seen_subjects == [], "root's client certificate was presented"
    assert not status["healthy"]
    assert victim.terminate() == 0


def test_their_regex_cannot_freeze_the_daemon(victim: DaemonProc) -> None:
    """u rewrites their own file's ``body_regex`` to ``^(a|aa)+$`` against a body of 64 a's
    and ``!``: a backtracking engine takes the event loop for ever (checks, API, SIGTERM).
    The canary keeps its schedule, the API answers and SIGTERM stops the daemon."""
    body = regex_attack.body_of("short")
    give_away(victim.config_dir, "owned")
    file = victim.config_dir / "theirs.yaml"
    with regex_attack.serving(body) as port:
        workload = f"workload: theirs\ntype: http\nhost: 127.0.0.1\nport: {port}\ninterval: 100ms\n"
        nobody_writes(file, workload + "body_regex: '^a+'\n")
        client = start_with_canary(victim)
        client.wait_status("theirs", lambda s: s["state"] == "healthy")
        nobody_writes(file, workload + f"body_regex: '{regex_attack.PATTERN}'\nretries: 1\n")
        error = regex_attack.body_error(port, body)
        client.wait_status("theirs", lambda s: s.get("last_error") == error)
        started = time.monotonic()
        canary_keeps_going(client, checks=10)  # 0.1 s apart
        assert time.monotonic() - started < 5
        started = time.monotonic()
        assert client.call("GET", "/v1/status").status == 200
        assert time.monotonic() - started < regex_attack.QUICK
        started = time.monotonic()
        assert victim.terminate(timeout=10) == 0
        assert time.monotonic() - started < 5
