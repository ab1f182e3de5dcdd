"""Redaction: each kind of personal data / secret is replaced, and ordinary text is left alone."""

import pytest

from specdec_profiler.redact import redact, redact_obj


@pytest.mark.parametrize("secret, placeholder", [
    ("jane.doe+news@example.co.uk", "<EMAIL>"),
    ("ops@mail.internal-corp.com", "<EMAIL>"),
])
def test_emails(secret, placeholder):
    out = redact(f"write to {secret} today")
    assert secret not in out and placeholder in out and out.startswith("write to ")


@pytest.mark.parametrize("phone", ["+1 (555) 123-4567", "555-123-4567", "(555) 123 4567", "+44 20 7946 0958",
                                   "+15551234567", "555.123.4567", "+49 30 12345678"])
def test_phone_numbers(phone):
    out = redact(f"call me at {phone} please")
    assert "<PHONE>" in out and not any(ch.isdigit() for ch in out), out


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111111111111111", "5500-0000-0000-0004",
                                  "378282246310005", "6011 0009 9013 9424"])
def test_card_numbers(card):
    out = redact(f"my card is {card}, exp 12/29")
    assert "<CARD>" in out and card not in out


def test_card_like_groups_are_redacted_even_without_luhn_but_other_long_numbers_are_not():
    assert redact("1234 5678 9012 3456") == "<CARD>"  # grouped like a card: redacted anyway
    assert redact("order 1234567890123") == "order 1234567890123"  # 13 digits, fails Luhn


@pytest.mark.parametrize("ip", ["192.168.1.10", "10.0.0.1", "255.255.255.255", "2001:db8::1",
                                "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "::1"])
def test_ip_addresses(ip):
    out = redact(f"server at {ip} is down")
    assert ip not in out and "<IP>" in out


@pytest.mark.parametrize("text, leaked", [
    ("Authorization: Bearer abcdefghijklmnop.qrs_tuv", "abcdefghijklmnop"),
    ("curl -H 'authorization: bearer 0123456789abcdef'", "0123456789abcdef"),
])
def test_bearer_tokens(text, leaked):
    out = redact(text)
    assert leaked not in out and "<TOKEN>" in out


@pytest.mark.parametrize("key", ["sk-abcdefghijklmnopqrstuvwxyz012345", "sk-proj-AbCdEfGhIjKlMnOpQrStUv_wx-yz",
                                 "sk-ant-api03-abcdefghijklmnopqrstuv", "AKIAIOSFODNN7EXAMPLE",
                                 "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                                 "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
                                 "xoxb-123456789012-abcdefghijkl", "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234"])
def test_api_keys(key):
    out = redact(f"export KEY_VALUE_X {key}\nuse it")
    assert key not in out and "<API_KEY>" in out


def test_jwt():
    jwt = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
           "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
    out = redact(f"token={jwt}")
    assert jwt not in out and "<JWT>" in out


def test_key_value_secrets_and_private_keys():
    out = redact('config: {"password": "hunter2hunter2", "api_key": "abc123def456ghi"} secret=s3cr3tvalue')
    for leaked in ("hunter2hunter2", "abc123def456ghi", "s3cr3tvalue"):
        assert leaked not in out
    assert out.count("<SECRET>") == 3
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    assert redact(f"key:\n{pem}\nend") == "key:\n<PRIVATE_KEY>\nend"


@pytest.mark.parametrize("text", [
    "Python 3.11 was released on 2022-10-24 and is 1.25x faster.",
    "We processed 10,000 tokens in 12:30:45 on version 2.0.",
    "std::vector<int> v; auto x = a::b;",
    "The credit card industry grew 5% in 2023; see page 12.",
    "def f(x):\n    return x * 365 + 42\n",
    "",
])
def test_ordinary_text_is_unchanged(text):
    assert redact(text) == text


def test_redact_obj_walks_nested_structures():
    obj = {"messages": [{"role": "user", "content": "mail me: a@b.io"}], "n": 3, "meta": {"ip": "8.8.8.8"}}
    assert redact_obj(obj) == {"messages": [{"role": "user", "content": "mail me: <EMAIL>"}], "n": 3,
                               "meta": {"ip": "<IP>"}}
