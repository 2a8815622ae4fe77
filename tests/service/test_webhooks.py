"""Webhook destinations and signatures, without a network."""

from __future__ import annotations

import time

import pytest

from fakescope.service.webhooks import CallbackURLError, check_callback_url, sign, verify_signature


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "ftp://93.184.216.34/",
        "http://user:pw@93.184.216.34/",
        "http:///nohost",
        # Found by the hardening probes: shared address space (a cloud metadata address), 6to4
        # loopback, IPv4-mapped loopback, a port out of range, a label over 63 characters, an
        # unusual port on a public host.
        "http://100.100.100.200/latest/meta-data",
        "http://[2002:7f00:1::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://example.com:99999/",
        "http://" + "a" * 64 + ".example.com/",
        "http://93.184.216.34:6379/",
        "http://198.51.100.7/",
    ],
)
def test_refused_destinations(url: str) -> None:
    with pytest.raises(CallbackURLError):
        check_callback_url(url)


def test_public_and_explicitly_allowed_destinations() -> None:
    assert check_callback_url("https://93.184.216.34/hook") == "https://93.184.216.34/hook"
    assert check_callback_url("http://10.1.2.3:8080/h", ["10.0.0.0/8"]) == "http://10.1.2.3:8080/h"
    assert check_callback_url("https://93.184.216.34:443/hook") == "https://93.184.216.34:443/hook"
    assert check_callback_url("http://93.184.216.34:8443/h", allowed_ports=[8443]) == "http://93.184.216.34:8443/h"
    with pytest.raises(CallbackURLError):
        check_callback_url("http://10.1.2.3/h", ["192.168.0.0/16"])


def test_signature_binds_secret_body_and_time() -> None:
    body = b'{"job_id":"x","state":"succeeded"}'
    header = sign("s3cret", body)
    assert verify_signature("s3cret", body, header)
    assert not verify_signature("other", body, header)
    assert not verify_signature("s3cret", body + b" ", header)
    assert not verify_signature("s3cret", body, sign("s3cret", body, timestamp=int(time.time()) - 3600))
    assert not verify_signature("s3cret", body, "garbage")
