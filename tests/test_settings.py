"""Settings: settings.yaml, a profile on top, FTATLAS_<SECTION>__<FIELD> env vars over both; every field documented."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from ftatlas.settings import Settings, SettingsError, load_settings

from conftest import REPO


def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text(encoding="utf-8"))


def test_profile_layers_over_the_base_file():
    base_yaml, test_yaml = _yaml("settings.yaml"), _yaml("settings-test.yaml")
    base = load_settings(None, root=REPO)
    test = load_settings("test", root=REPO)
    assert test_yaml["llm"]["n_ctx"] != base_yaml["llm"]["n_ctx"]  # the profile really overrides something
    assert base.llm.n_ctx == base_yaml["llm"]["n_ctx"]
    assert test.llm.n_ctx == test_yaml["llm"]["n_ctx"]
    assert test.llm.max_tokens == test_yaml["llm"]["max_tokens"] != base.llm.max_tokens
    assert test.data_dir == REPO / test_yaml["ingest"]["data_dir"] != base.data_dir
    # keys the profile does not mention keep the base file's values, within the same section too
    assert test.ingest.chunk_tokens == base.ingest.chunk_tokens == base_yaml["ingest"]["chunk_tokens"]
    assert test.llm.engine == base.llm.engine == base_yaml["llm"]["engine"]
    assert test.serve.port == base_yaml["serve"]["port"]


def test_env_beats_yaml(monkeypatch):
    monkeypatch.setenv("FTATLAS_LLM__N_CTX", "1234")
    monkeypatch.setenv("FTATLAS_RETRIEVAL__TOP_K", "9")
    s = load_settings("test", root=REPO)
    assert s.llm.n_ctx == 1234
    assert s.retrieval.top_k == 9
    assert s.llm.max_tokens == _yaml("settings-test.yaml")["llm"]["max_tokens"]  # the rest of the section still comes from the YAML


def test_env_beats_explicit_overrides_but_keeps_their_other_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("FTATLAS_INGEST__CHUNK_TOKENS", "77")
    s = load_settings("test", root=REPO, ingest={"data_dir": str(tmp_path), "chunk_tokens": 500})
    assert s.ingest.chunk_tokens == 77
    assert s.data_dir == tmp_path


def test_profile_from_env(monkeypatch):
    monkeypatch.setenv("FTATLAS_PROFILE", "test")
    assert load_settings(root=REPO).llm.n_ctx == _yaml("settings-test.yaml")["llm"]["n_ctx"]
    monkeypatch.setenv("FTATLAS_PROFILE", "gpu")
    assert load_settings(root=REPO).llm.engine == _yaml("settings-gpu.yaml")["llm"]["engine"] != "llamacpp"


def test_missing_profile_raises(tmp_path):
    shutil.copy(REPO / "settings.yaml", tmp_path / "settings.yaml")
    with pytest.raises(SettingsError, match="nosuch"):
        load_settings("nosuch", root=tmp_path)


def test_malformed_profile_raises(tmp_path):
    shutil.copy(REPO / "settings.yaml", tmp_path / "settings.yaml")
    (tmp_path / "settings-bad.yaml").write_text("llm: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings("bad", root=tmp_path)
    (tmp_path / "settings-list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings("list", root=tmp_path)


def test_null_in_a_profile_restores_the_fields_default(tmp_path):
    # settings.yaml serves the shipped adapter; the test profile must be able to serve none (`adapters: null`).
    (tmp_path / "settings.yaml").write_text("llm:\n  adapters:\n    gemma3: adapters/gemma3\n  n_ctx: 2048\n")
    (tmp_path / "settings-bare.yaml").write_text("llm:\n  adapters: null\n")
    assert load_settings(None, root=tmp_path).llm.adapters == {"gemma3": Path("adapters/gemma3")}
    bare = load_settings("bare", root=tmp_path)
    assert bare.llm.adapters == {} and bare.llm.n_ctx == 2048


def test_relative_paths_resolve_against_root(tmp_path):
    shutil.copy(REPO / "settings.yaml", tmp_path / "settings.yaml")
    s = load_settings(None, root=tmp_path)
    assert s.data_dir == tmp_path.resolve() / "data"
    assert s.path(s.ingest.manifest) == tmp_path.resolve() / "corpus" / "manifest.yaml"
    assert s.path("/abs/x") == Path("/abs/x")


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, f"{prefix}{name}.")


def test_every_field_is_described():
    fields = list(_fields(Settings))
    assert len(fields) > 60  # the walk really went into every section
    assert {"ingest.chunk_tokens", "llm.n_ctx", "serve.api_keys", "evals.thresholds"} <= {n for n, _ in fields}
    undocumented = [name for name, f in fields if not (f.description and f.description.strip())]
    assert undocumented == []


def test_every_yaml_key_is_a_real_field():
    known = {n for n, _ in _fields(Settings)}
    for f in REPO.glob("settings*.yaml"):
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        keys = {f"{section}.{key}" for section, values in data.items() for key in values}
        assert keys <= known, (f.name, keys - known)


def test_api_keys_parse_from_env_as_json_list(monkeypatch):
    monkeypatch.setenv("FTATLAS_SERVE__API_KEYS", '["alpha", "beta"]')
    assert load_settings("test", root=REPO).serve.api_keys == ["alpha", "beta"]
