"""Settings from the environment, key digests, and the refusal to serve exposed without keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agelens.server.settings import Settings, hash_api_key


def test_defaults_are_safe() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert not settings.auth_required
    assert settings.cors_origins == []
    assert settings.url_allow_networks == []
    settings.check_exposure()


def test_environment_variables_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hash_api_key("k1")
    monkeypatch.setenv("AGELENS_PORT", "9001")
    monkeypatch.setenv("AGELENS_API_KEY_HASHES", f" {digest.upper()} ,")
    monkeypatch.setenv("AGELENS_API_KEYS", "k2,k3")
    monkeypatch.setenv("AGELENS_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("AGELENS_URL_ALLOW_NETWORKS", "10.20.0.0/16")
    settings = Settings()
    assert settings.port == 9001
    assert settings.api_key_hashes == [digest]
    assert settings.key_digests() == {digest, hash_api_key("k2"), hash_api_key("k3")}
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.url_allow_networks == ["10.20.0.0/16"]
    assert "k2" not in repr(settings)


@pytest.mark.parametrize(
    "fields",
    [
        {"api_key_hashes": ["not-a-digest"]},
        {"url_allow_networks": ["not a network"]},
        {"port": 70000},
        {"max_body_bytes": 10},
        {"queue_size": 0},
    ],
)
def test_invalid_values_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "allowed"),
    [
        ({"host": "127.0.0.1"}, True),
        ({"host": "::1"}, True),
        ({"host": "localhost"}, True),
        ({"host": "0.0.0.0"}, False),
        ({"host": "192.168.1.5"}, False),
        ({"host": "0.0.0.0", "api_keys": ["k"]}, True),
        ({"host": "0.0.0.0", "insecure": True}, True),
    ],
)
def test_exposure_needs_keys_or_insecure(fields: dict[str, object], allowed: bool) -> None:
    settings = Settings(**fields)  # type: ignore[arg-type]
    if allowed:
        settings.check_exposure()
    else:
        with pytest.raises(ValueError, match="API keys"):
            settings.check_exposure()


def test_port_comes_from_agelens_port_else_the_platforms_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGELENS_PORT", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert Settings().port == 8000
    monkeypatch.setenv("PORT", "8080")
    assert Settings().port == 8080
    assert Settings(port=9100).port == 9100  # --port wins
    monkeypatch.setenv("AGELENS_PORT", "9001")
    assert Settings().port == 9001
    monkeypatch.delenv("AGELENS_PORT")
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings()


def test_an_empty_basic_auth_user_name_means_none_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGELENS_BASIC_AUTH_USERNAME", "")
    assert Settings().basic_auth_username is None
    monkeypatch.setenv("AGELENS_BASIC_AUTH_USERNAME", "tf-client")
    assert Settings().basic_auth_username == "tf-client"
