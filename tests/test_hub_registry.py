"""Provider discovery through entry points: broken plugins are listed, never fatal."""

from __future__ import annotations

import pytest

from adapterstudio.api import ENTRY_POINT_GROUP, UserError
from adapterstudio.api.registry import discover, load_provider
from adapterstudio.core.errors import NotFound

PLUGIN = '''
from adapterstudio.api import ProviderCapabilities

class Good:
    name = "good"
    display_name = "Good"
    capabilities = ProviderCapabilities()
    def __init__(self, config): self.config = config
    def describe(self): return "good"
    def auth_status(self): ...
    def login(self, token): ...
    def logout(self): ...
    def search(self, query="", **kw): return []
    def show(self, repo_id, revision=None): ...
    def pull(self, *a, **kw): ...
    def push(self, *a, **kw): ...
    def delete(self, repo_id): ...
    def validate_card(self, text): return []

class Half:
    def __init__(self, config): pass
    name = "half"

def explode(config):
    raise RuntimeError("cannot reach the registry service")

raise_at_import = False
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_hub_plugins.py").write_text(PLUGIN)
    (site / "crashing_plugin.py").write_text("raise SystemExit('plugin called exit at import')\n")
    dist = site / "fake_hub_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-hub-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "good = fake_hub_plugins:Good\nhalf = fake_hub_plugins:Half\nexplode = fake_hub_plugins:explode\n"
        "missing = no_such_module_here:make\nexits = crashing_plugin:make\nnotcallable = fake_hub_plugins:raise_at_import\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_discovery_lists_every_plugin_and_why_broken_ones_are_broken(plugins):
    entries = {e.name: e for e in discover()}
    assert entries["good"].ok and entries["good"].distribution == "fake-hub-plugins" and entries["good"].version == "1.0"
    assert "ModuleNotFoundError" in entries["missing"].error and "no_such_module_here" in entries["missing"].error
    assert "SystemExit" in entries["exits"].error  # even a plugin that exits at import does not stop discovery
    assert "not callable" in entries["notcallable"].error
    assert entries["huggingface"].ok and entries["folder"].ok  # the real plugins are unaffected


def test_loading_reports_broken_incomplete_or_failing_providers_in_one_sentence(plugins):
    assert load_provider("good").describe() == "good"
    with pytest.raises(UserError, match="is broken: ModuleNotFoundError"):
        load_provider("missing")
    with pytest.raises(UserError, match="could not start: RuntimeError: cannot reach the registry service"):
        load_provider("explode")
    with pytest.raises(UserError, match="does not implement the plugin API: missing display_name"):
        load_provider("half")
    with pytest.raises(NotFound, match="No hub provider named 'nope'.*available: .*good"):
        load_provider("nope")


def test_disabled_plugins_are_listed_but_not_loaded(plugins):
    entries = {e.name: e for e in discover(disabled=["good"])}
    assert entries["good"].disabled and not entries["good"].ok and entries["good"].factory is None
    with pytest.raises(UserError, match="disabled"):
        load_provider("good", disabled=["good"])
