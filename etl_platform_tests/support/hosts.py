"""Test hosts on this machine: Linux network namespaces on a bridge, each with its own address
and hostname, that reach this machine's services only over the bridge.

`Network` makes a bridge `k8sb<tag>` with a free /24 of 10.231.0.0/16 (the gateway, .1, is this
machine), `add_host()` a namespace `k8s-<tag>-<name>` joined to it by a veth pair, and
`forward(port)` a TCP forwarder (socat) from the gateway's address to 127.0.0.1: PostgreSQL,
RabbitMQ and Redis listen on loopback only, and RabbitMQ's guest user may only connect from
there, so the hosts reach them through it. The machine's services are not reconfigured.
`Host.spawn()` starts a process inside a host, under a hostname of its own (a UTS namespace;
`Host.run()` runs one to its end),
`Host.power_off()` kills every process of the host at once and takes its link down. `close()`
removes everything this Network made (root only: `ip netns`, `unshare`).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

SUPERNET = ipaddress.ip_network("10.231.0.0/16")


def missing_tools() -> str | None:
    """Why test hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "socat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs iproute2, util-linux and socat)"
    return None


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    used = [ipaddress.ip_network(line.split()[0], strict=False) for line in _ip("-4", "route").splitlines()
            if line and line.split()[0][0].isdigit()]
    subnets = list(SUPERNET.subnets(new_prefix=24))
    random.shuffle(subnets)
    for subnet in subnets:
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /24 in {SUPERNET}")


class Host:
    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network = network
        self.name = name
        self.netns = f"k8s-{network.tag}-{name}"
        self.hostname = f"k8s-{name}-{network.tag}"
        self.address = address
        self.veth = f"k8sv{network.tag}{name[-2:]}"
        self.procs: list[subprocess.Popen] = []

    def spawn(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
        """Start `cmd` on this host (its network namespace, its hostname); output to `log`."""
        wrapped = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                   f'hostname {self.hostname} && exec "$@"', "sh", *cmd]
        with open(log, "ab") as out:
            proc = subprocess.Popen(wrapped, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `cmd` on this host to its end."""
        return subprocess.run(["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                               f'hostname {self.hostname} && exec "$@"', "sh", *cmd],
                              env=env, capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, timeout=30)
        return [int(p) for p in done.stdout.split()]

    def power_off(self) -> None:
        """A power cut: the host's link goes down first (nothing it sends gets out, not even its
        sockets' closing), then every process of the host is killed (SIGKILL)."""
        _ip("link", "set", self.veth, "down", check=False)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.power_off()  # whatever is left


class Network:
    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:4]
        self.bridge = f"k8sb{self.tag}"
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.hosts: list[Host] = []
        self.forwarders: list[subprocess.Popen] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        host = Host(self, name, str(self.subnet.network_address + 10 + len(self.hosts)))
        peer = f"{host.veth}p"
        _ip("netns", "add", host.netns)
        self.hosts.append(host)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("link", "set", peer, "netns", host.netns)
        inside = ["netns", "exec", host.netns, "ip"]
        _ip(*inside, "addr", "add", f"{host.address}/24", "dev", peer)
        _ip(*inside, "link", "set", peer, "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", "default", "via", self.gateway)
        return host

    def forward(self, port: int) -> None:
        """The gateway's `port` forwarded to 127.0.0.1:`port` (a service on this machine's loopback).
        TCP keepalive toward the hosts (probes after 5 s idle, 3 more 2 s apart) closes a dead host's
        connections within about 11 s, as PostgreSQL's tcp_keepalives_* settings would on a real
        network (README, "Worker machines"): the service then ends those sessions and their locks."""
        listen = f"TCP-LISTEN:{port},bind={self.gateway},reuseaddr,fork,keepalive,keepidle=5,keepintvl=2,keepcnt=3"
        self.forwarders.append(subprocess.Popen(
            ["socat", listen, f"TCP:127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))

    def close(self) -> None:
        for host in self.hosts:
            host.stop()
            _ip("netns", "del", host.netns, check=False)  # its end of the veth pair goes with it
            _ip("link", "del", host.veth, check=False)
        for proc in self.forwarders:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # socat and its per-connection children
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        _ip("link", "del", self.bridge, check=False)
