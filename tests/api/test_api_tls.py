"""TLS for the API and ultrascalectl over https:// (issue 12, item 6), on a real socket with a
self-signed certificate made for the test by `openssl req`."""
from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import pytest

from ultrascaled.surface.api.auth import tls_context
from support import needs
from support.harness import BIN


@pytest.fixture
def cert(tmp_path):
    openssl = needs.openssl()
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(crt), str(key)


def spec(cert=None, key=None):
    return SimpleNamespace(api=SimpleNamespace(tls_cert=cert, tls_key=key))


def ctl(live, *args, env=None):
    return subprocess.run([str(BIN / "ultrascalectl"), "--api", live.url, *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_ultrascalectl_speaks_https_with_the_ca_file(make_live, fleet, cert, tmp_path):
    from api_helpers import Token
    token = tmp_path / "token"
    token.write_text("ops:" + "t" * 32 + "\n")
    live = make_live(ssl_context=tls_context(spec(*cert)), tls=True, tokens=(Token("ops", "t" * 32),))
    assert live.url.startswith("https://")
    out = ctl(live, "--ca-file", cert[0], "status")
    assert out.returncode == 0, out.stderr
    assert "2/2 ready" in out.stdout
    out = ctl(live, "status", env={**os.environ, "ULTRASCALE_CA_FILE": cert[0]})
    assert out.returncode == 0, out.stderr
    out = ctl(live, "--ca-file", cert[0], "--token-file", str(token), "scale", "3", "--no-wait")
    assert out.returncode == 0, out.stderr
    assert fleet.calls == [("scale", 3)]
    assert any(e["event"] == "api.request" and e["actor"] == "ops" for e in fleet.events.since(0))


def test_an_unverified_certificate_is_refused_by_the_client(make_live, cert):
    live = make_live(ssl_context=tls_context(spec(*cert)), tls=True)
    out = ctl(live, "status")
    assert out.returncode == 3 and "--ca-file" in out.stderr
    assert "CERTIFICATE_VERIFY_FAILED: self-signed certificate" in out.stderr


def test_plain_http_to_the_tls_port_gets_no_answer(make_live, cert):
    live = make_live(ssl_context=tls_context(spec(*cert)), tls=True)
    out = subprocess.run([str(BIN / "ultrascalectl"), "--api", live.url.replace("https", "http"), "status"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (3, 4) and "2/2 ready" not in out.stdout


def test_tls_settings_are_checked(cert, tmp_path):
    assert tls_context(spec()) is None
    with pytest.raises(ValueError, match="go together"):
        tls_context(spec(cert[0], None))
    with pytest.raises(ValueError, match="cannot load"):
        tls_context(spec(cert[0], str(tmp_path / "missing.pem")))
