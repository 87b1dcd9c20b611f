"""srv_nginx - Debian's nginx as a TLS partner that requires client
certificates (mutual TLS), on 127.0.0.1 with free ports and a directory
of its own; it proxies what it accepts to a plain HTTP sink, with the
client certificate's subject in X-Client-DN. Certificates are made with
the openssl command when the server is prepared:

    ca.crt/ca.key        the CA partners trust (it signs server and client)
    server.crt/.key      for DNS:partner.test only (no IP): reaching it as
                         127.0.0.1 needs tls.server_name
    client.crt/.key      CN=patchbay-client, signed by the CA
    rogue.crt/.key       a client certificate from another CA

    n = Nginx(upstream_port)      # n.port (TLS 1.2 and 1.3), n.port12 (1.2 only)
    n.path("client.crt")

Standard library only (and the openssl and nginx commands).
"""

import os
import subprocess

from servers import Server, port_open
from pbtest import free_port

NGINX = "/usr/sbin/nginx"


def _ssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Nginx(Server):
    name = "nginx"

    def __init__(self, upstream_port, **kw):
        self.upstream_port = upstream_port
        self.port12 = free_port()
        super().__init__(**kw)

    def path(self, name):
        return os.path.join(self.dir, name)

    def _certs(self):
        d = self.dir
        with open(self.path("server.ext"), "w") as f:
            f.write("subjectAltName=DNS:partner.test\nextendedKeyUsage=serverAuth\n")
        with open(self.path("client.ext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        _ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-subj", "/CN=patchbay test CA", "-days", "2", cwd=d)
        for name, subj in (("server", "/CN=partner.test"), ("client", "/CN=patchbay-client")):
            _ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", subj, cwd=d)
            _ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=d)
        _ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
             "rogue.crt", "-subj", "/CN=rogue", "-days", "2", cwd=d)

    def prepare(self):
        self._certs()
        d = self.dir
        os.makedirs(self.path("tmp"), exist_ok=True)
        server = """
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name partner.test;
        ssl_certificate {d}/server.crt;
        ssl_certificate_key {d}/server.key;
        ssl_client_certificate {d}/ca.crt;
        ssl_verify_client on;
        ssl_protocols {protocols};
        location / {{
            proxy_pass http://127.0.0.1:{up};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Client-DN $ssl_client_s_dn;
            proxy_set_header X-TLS-Protocol $ssl_protocol;
        }}
    }}"""
        with open(self.path("nginx.conf"), "w") as f:
            f.write(f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    {server.format(port=self.port, d=d, protocols="TLSv1.2 TLSv1.3", up=self.upstream_port)}
    {server.format(port=self.port12, d=d, protocols="TLSv1.2", up=self.upstream_port)}
}}
""")

    def argv(self):
        return [NGINX, "-p", self.dir, "-c", self.path("nginx.conf")]

    def ready(self):
        return port_open(self.port) and port_open(self.port12)
