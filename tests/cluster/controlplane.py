"""A real Kubernetes control plane for tests: etcd, kube-apiserver (RBAC on), kube-controller-manager and
kube-scheduler from ``$KUBEBUILDER_ASSETS`` (controller-runtime's envtest convention), on free loopback ports,
with throwaway certificates made by ``openssl``.

There is no kubelet and no container runtime: :mod:`cluster.nodes` plays the nodes. Everything the control plane
does itself (scheduling, garbage collection, taint eviction, pod GC, Deployments and ReplicaSets, RBAC,
admission with CEL rules) is the real thing.

    with ControlPlane.start(workdir) as cp:
        cp.admin_kubeconfig            # a kubeconfig in group system:masters
        cp.kubeconfig_for_token(tok)   # a kubeconfig for a ServiceAccount token (RBAC applies)
        cp.audit_events()              # the audit log of the users in `audited_users`

Only the processes started here are ever stopped, by their process ids.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

#: Binaries an envtest asset folder must hold.
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: The variable that makes a missing control plane a failure instead of a skip (set by .ci/run).
REQUIRE_ENV = "GPUNET_REQUIRE_CLUSTER"
SERVICE_CIDR = "10.96.0.0/24"
#: kube-controller-manager's read-your-writes check of its workload controllers (beta, on by default in v1.36)
#: waits for its informer to see the controller's own last write. Against Debian's etcd 3.4, which lacks watch
#: progress notifications, a ReplicaSet sometimes failed that check three times in a row and then waited out the
#: controller's retry backoff: its pod came a minute later or not within a test. Off here; real clusters run
#: etcd 3.5+.
STALE_CONSISTENCY_OFF = ",".join(f"StaleControllerConsistency{kind}=false" for kind in ("ReplicaSet", "DaemonSet", "Job", "StatefulSet"))


def missing_assets(assets: str | None) -> str | None:
    """Why the control plane cannot start from ``assets`` (a folder), or None when it can."""
    if not assets:
        return ("KUBEBUILDER_ASSETS is not set: point it at a folder with etcd, kube-apiserver, "
                "kube-controller-manager and kube-scheduler (setup-envtest, or ../shared/k8s/unpack DIR)")
    lacking = [b for b in BINARIES if not os.access(Path(assets) / b, os.X_OK)]
    if lacking:
        return f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(lacking)}"
    if shutil.which("openssl") is None:
        return "openssl is not installed (it makes the control plane's throwaway certificates)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(pki: Path, clients: dict[str, tuple[str, str | None]]) -> None:
    """A CA, a serving certificate for 127.0.0.1 and one client certificate per entry of ``clients``
    (``file stem -> (common name, organisation)``), plus the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=gpunet-test-ca", cwd=pki)
    (pki / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
                                    "extendedKeyUsage=serverAuth\n")
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    subjects = {"server": ("/CN=kube-apiserver", "server.ext")}
    for stem, (cn, org) in clients.items():
        subjects[stem] = (f"/CN={cn}" + (f"/O={org}" if org else ""), "client.ext")
    for stem, (subject, ext) in subjects.items():
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", subject, cwd=pki)
        _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{stem}.crt", "-days", "2", "-extfile", ext, cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None, token: str | None = None) -> dict[str, Any]:
    user: dict[str, Any] = {"token": token} if token else {"client-certificate": str(cert), "client-key": str(key)}
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }


@dataclass
class ControlPlane:
    """A running control plane; see the module docstring."""

    workdir: Path
    assets: Path
    audited_users: tuple[str, ...] = ()
    #: ``(group, resource)`` pairs whose requests by ``audited_users`` are logged with their bodies (level Request)
    audited_bodies: tuple[tuple[str, str], ...] = ()
    server: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    @classmethod
    def start(cls, workdir: Path, assets: str | Path, audited_users: tuple[str, ...] = (),
              audited_bodies: tuple[tuple[str, str], ...] = ()) -> "ControlPlane":
        cp = cls(Path(workdir), Path(assets), tuple(audited_users), tuple(audited_bodies))
        try:
            cp._start()
        except BaseException:
            cp.stop()
            raise
        return cp

    def __enter__(self) -> "ControlPlane":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- processes ----------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.processes[name] = proc
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _wait(self, what: str, url: str, timeout: float = 60.0) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if not url.startswith(self.server):
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # kcm and scheduler serve self-signed health
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not become healthy at {url} within {timeout:.0f}s")
            time.sleep(0.2)

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_certificates(self.pki, {
            "admin": ("gpunet-test-admin", "system:masters"),
            "kcm": ("system:kube-controller-manager", None),
            "scheduler": ("system:kube-scheduler", None),
        })
        pki = self.pki
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        for stem in ("admin", "kcm", "scheduler"):
            doc = kubeconfig(self.server, pki / "ca.crt", cert=pki / f"{stem}.crt", key=pki / f"{stem}.key")
            (self.workdir / f"{stem}.kubeconfig").write_text(yaml.safe_dump(doc))
        self._spawn("etcd", [
            str(self.assets / "etcd"), "--name", "default", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}", "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync",
        ])
        rules: list[dict[str, Any]] = []
        if self.audited_users:
            rules += [{"level": "Request", "users": list(self.audited_users), "resources": [{"group": g, "resources": [r]}]}
                      for g, r in self.audited_bodies]
            rules.append({"level": "Metadata", "users": list(self.audited_users)})
        policy = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                  "rules": rules + [{"level": "None"}]}
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(policy))
        self._spawn("kube-apiserver", [
            str(self.assets / "kube-apiserver"), "--bind-address=127.0.0.1", f"--secure-port={api_port}",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}", f"--tls-cert-file={pki / 'server.crt'}",
            f"--tls-private-key-file={pki / 'server.key'}", f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC", "--endpoint-reconciler-type=none", "--profiling=false",
            f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-mode=batch", "--audit-log-batch-max-wait=200ms", "--audit-log-batch-max-size=500",
        ])
        self._wait("etcd + kube-apiserver", f"{self.server}/readyz", timeout=90)
        kcm_port, scheduler_port = free_port(), free_port()
        self._spawn("kube-controller-manager", [
            str(self.assets / "kube-controller-manager"), f"--kubeconfig={self.workdir / 'kcm.kubeconfig'}",
            f"--authentication-kubeconfig={self.workdir / 'kcm.kubeconfig'}",
            f"--authorization-kubeconfig={self.workdir / 'kcm.kubeconfig'}",
            f"--service-account-private-key-file={pki / 'sa.key'}", "--use-service-account-credentials",
            f"--root-ca-file={pki / 'ca.crt'}", "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}", "--profiling=false", f"--feature-gates={STALE_CONSISTENCY_OFF}",
        ])
        self._spawn("kube-scheduler", [
            str(self.assets / "kube-scheduler"), f"--kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", "--profiling=false",
        ])
        self._wait("kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz")
        self._wait("kube-scheduler", f"https://127.0.0.1:{scheduler_port}/healthz")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, the processes started here (and only those), newest first."""
        for name, proc in reversed(list(self.processes.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.processes.clear()

    # --- clients --------------------------------------------------------------------------------------------
    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """Write a kubeconfig that authenticates with a bearer ``token`` (e.g. a ServiceAccount's)."""
        path.write_text(yaml.safe_dump(kubeconfig(self.server, self.pki / "ca.crt", token=token)))
        return path

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """The audit events logged so far (stage ResponseComplete/ResponseStarted/Panic) of ``audited_users``."""
        if not self.audit_log.exists():
            return
        with open(self.audit_log, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
