"""Settings: every option's one declaration, and the environment fallbacks it names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmevol.graph.config import OPENAI_DEFAULT_BASE_URL, Settings


def test_a_value_wins_over_the_environment_which_wins_over_the_default(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("MMEVOL_PRICES", raising=False)
    assert Settings().base_url == OPENAI_DEFAULT_BASE_URL and Settings().prices is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env/v1")
    monkeypatch.setenv("MMEVOL_PRICES", "env-prices.json")
    assert Settings().base_url == "http://env/v1"
    assert Settings().prices == Path("env-prices.json")
    given = Settings(base_url="http://given/v1", prices="given.json")
    assert (given.base_url, given.prices) == ("http://given/v1", Path("given.json"))


def test_every_setting_has_help_text():
    for field in dataclasses.fields(Settings):
        assert field.metadata.get("help"), field.name


def test_the_key_is_never_an_option_nor_shown():
    field = next(f for f in dataclasses.fields(Settings) if f.name == "api_key")
    assert field.metadata["cli"] is False
    assert "secret" not in repr(Settings(api_key="secret"))
    assert "api_key" not in Settings(api_key="secret").public()


def test_several_endpoints_from_a_list_or_from_urls_separated_by_spaces(monkeypatch):
    listed = Settings(base_url=["http://a/v1", "http://b/v1", "http://a/v1"])
    assert listed.base_urls == ("http://a/v1", "http://b/v1")  # each once, in order
    monkeypatch.setenv("OPENAI_BASE_URL", "  http://a/v1\thttp://b/v1\n")
    assert Settings().base_urls == ("http://a/v1", "http://b/v1")
    assert Settings(base_url="http://c/v1").base_urls == ("http://c/v1",)
    monkeypatch.setenv("OPENAI_BASE_URL", "   ")
    assert Settings().base_urls == (OPENAI_DEFAULT_BASE_URL,)


def test_one_endpoint_is_recorded_as_a_string_and_several_as_a_list():
    one = Settings(base_url=["http://a/v1"])
    assert one.public()["base_url"] == one.base_url == "http://a/v1"
    several = Settings(base_url=["http://a/v1", "http://b/v1"])
    assert several.public()["base_url"] == ["http://a/v1", "http://b/v1"]
    # Both come back as they were, and a worker's settings keep every endpoint.
    for settings in (one, several):
        again = Settings(**{k: v for k, v in settings.public().items()})
        assert again.base_urls == settings.base_urls
    assert several.for_worker(0, 2).base_urls == several.base_urls


def test_recorded_settings_hold_no_credentials_of_a_url():
    settings = Settings(base_url="https://user:s3cret@proxy.example/v1 http://h2:8000/v1")
    recorded = settings.public()
    assert recorded["base_url"] == ["https://proxy.example/v1", "http://h2:8000/v1"]
    assert "s3cret" not in str(recorded)
    assert Settings(base_url="http://k:p@h/v1").public()["base_url"] == "http://h/v1"
