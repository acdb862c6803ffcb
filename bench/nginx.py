"""nginx for benchmarks: a private instance (config, pid, logs and temp files under a directory of its
own), one worker, listening on a loopback port; as a reverse proxy or as a static JSON upstream."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import server
from bench.static_upstream import BODY

_CONFIG = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/client_body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  # wrk keeps its connections for the whole run; nginx would otherwise close each after 1000 requests.
  keepalive_requests 10000000;
  {upstream}
  server {{
    listen 127.0.0.1:{port};
    location = /health {{ return 200 "ok"; }}
    location / {{ {location} }}
  }}
}}
"""


def require_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if path is None:
        sys.exit("nginx is needed: apt-get install -y nginx")
    return path


@contextmanager
def nginx(port: int, *, proxy_to: int | None = None, cpus: Collection[int] | None = None) -> Iterator[int]:
    """A reverse proxy to 127.0.0.1:`proxy_to` with pooled keep-alive connections, or without
    `proxy_to` an upstream answering every request with the static JSON document. Yields the pid of
    its master process."""
    if proxy_to is None:
        upstream = ""
        body = BODY.decode().replace("'", "\\'")
        location = f"default_type application/json; return 200 '{body}';"
    else:
        upstream = f"upstream backend {{ server 127.0.0.1:{proxy_to}; keepalive 128; }}"
        location = 'proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";'
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as scratch:
        # Run as root, nginx's worker becomes `nobody`, which must reach the temp paths.
        Path(scratch).chmod(0o755)
        conf = Path(scratch) / "nginx.conf"
        conf.write_text(_CONFIG.format(dir=scratch, port=port, upstream=upstream, location=location))
        command = [require_nginx(), "-p", scratch, "-c", str(conf), "-e", f"{scratch}/error.log"]
        with server(command, env={}, health_url=f"http://127.0.0.1:{port}/health", cpus=cpus) as proc:
            yield proc.pid
