"""The README documents the settings the code has."""

from __future__ import annotations

from scripts import settings_doc


def test_settings_table_matches_the_settings_model() -> None:
    """README.md's settings table is what `python -m scripts.settings_doc` renders from the model now."""
    text = settings_doc.README.read_text(encoding="utf-8")
    assert settings_doc.render_readme(text) == text, "run `uv run python -m scripts.settings_doc`"


def test_every_setting_is_described() -> None:
    """Each setting has a description, and no description outlives its setting."""
    assert settings_doc.problems() == []


def test_check_mode_passes_on_the_committed_readme() -> None:
    """`--check` exits 0 when the README is current (as CI runs it)."""
    assert settings_doc.main(["--check"]) == 0


def test_passwords_in_default_urls_are_masked() -> None:
    """A default URL's password never reaches the README."""
    assert (
        settings_doc.mask_password("amqp://guest:guest@127.0.0.1:5672/")
        == "amqp://guest:****@127.0.0.1:5672/"
    )
    assert settings_doc.mask_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
