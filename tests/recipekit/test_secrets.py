"""recipekit.secrets: tokens are given by reference only."""

import pytest

from recipekit import secrets
from recipekit.errors import UsageError


def test_env_reference(monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "hf_secret_value\n")
    assert secrets.read_secret("use_auth_token", "MY_TOKEN") == "hf_secret_value"
    assert secrets.read_secret("use_auth_token", "env:MY_TOKEN") == "hf_secret_value"


def test_file_reference(tmp_path):
    path = tmp_path / "token"
    path.write_text("hf_from_file\n")
    assert secrets.read_secret("use_auth_token", str(path)) == "hf_from_file"
    assert secrets.read_secret("use_auth_token", f"file:{path}") == "hf_from_file"


def test_literal_token_is_refused_without_echoing_it():
    (problem,) = secrets.check_reference("use_auth_token", "hf_abcdefSECRET")
    assert problem.startswith("use_auth_token: ") and "SECRET" not in problem


def test_missing_env_and_file(monkeypatch, tmp_path):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(UsageError, match="NOT_SET_ANYWHERE is not set"):
        secrets.read_secret("use_auth_token", "NOT_SET_ANYWHERE")
    with pytest.raises(UsageError, match="cannot read a token"):
        secrets.read_secret("use_auth_token", str(tmp_path / "absent"))
