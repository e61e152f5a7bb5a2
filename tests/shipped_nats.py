"""The nats-server configurations we ship (infra/nats), installed as an operator would, but under
a test's own folder and on free ports.

An operator runs `dim nats-config --out DIR`, copies DIR to where the configuration's paths
point (``/etc/nats/dim`` or ``/etc/nats/dim-nN``) and puts the configuration inside it as
``nats-server.conf``. `install` does the same with exactly two textual changes to the shipped
file, and nothing else:

- every quoted absolute path under ``/etc/`` or ``/var/`` gets `root` in front of it
  (``"/etc/nats/dim/tls/server.pem"`` becomes ``"<root>/etc/nats/dim/tls/server.pem"``);
- every shipped port (``:4222`` .. ``:4224`` clients, ``:6222`` .. ``:6224`` routes, ``:8222`` ..
  ``:8224`` monitoring) becomes the free port `ports` maps it to.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from services.nats_server import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "infra" / "nats"
SHIPPED_PORTS = (4222, 4223, 4224, 6222, 6223, 6224, 8222, 8223, 8224)


def free_ports() -> dict[int, int]:
    """A free port for each shipped one."""
    return {port: free_port() for port in SHIPPED_PORTS}


def rewrite(text: str, root: Path, ports: dict[int, int]) -> str:
    """The shipped configuration `text` with its paths under `root` and its ports from `ports`."""
    text = re.sub(r'"/(etc|var)/', lambda m: f'"{root.resolve()}/{m.group(1)}/', text)
    return re.sub(r":(\d{4})\b", lambda m: f":{ports.get(int(m.group(1)), m.group(1))}", text)


def install(conf: Path, security: Path, root: Path, ports: dict[int, int]) -> Path:
    """Install shipped configuration `conf` with the security directory `security` (made by
    `dim nats-config`) copied beside it, under `root`; returns the configuration's path."""
    text = rewrite(conf.read_text(), root, ports)
    found = re.search(r'cert_file: "(.+)/tls/server\.pem"', text)
    if found is None:
        raise ValueError(f"{conf}: no tls cert_file in <directory>/tls/server.pem")
    home = Path(found.group(1))  # the security directory the configuration points at
    shutil.copytree(security, home)
    installed = home / "nats-server.conf"
    installed.write_text(text)
    return installed
