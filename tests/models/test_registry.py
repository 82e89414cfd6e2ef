"""The adapter registry: built-ins by name, did-you-mean, and plug-ins via entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import repalign.models._registry as registry
from repalign.models import Adapter, LayerInfo, get_adapter, list_adapters


class DummyAdapter(Adapter):
    """What a user's package would ship (found through the fake entry point below)."""

    name = "dummy-plugin"
    description = "test plug-in"

    @classmethod
    def load(cls, **kwargs):
        return cls()

    def layers(self):
        return [LayerInfo("text.layer.0", "layer", "text", 1, 1.0)]

    def collate(self, samples):
        return {}


def test_builtins_are_registered():
    names = list_adapters()
    for name in ("hf-text", "timm-vision", "bert-vit"):
        assert name in names
        assert get_adapter(name).name == name


def test_unknown_adapter_suggests_and_lists():
    with pytest.raises(KeyError, match="Did you mean 'hf-text'") as exc:
        get_adapter("hf_text")
    assert "timm-vision" in str(exc.value)


def test_entry_point_adapter_is_discovered(monkeypatch):
    eps = [
        EntryPoint("dummy-plugin", f"{__name__}:DummyAdapter", registry.ENTRY_POINT_GROUP),
        EntryPoint("broken-plugin", "no_such_module_xyz:Thing", registry.ENTRY_POINT_GROUP),
    ]
    seen = {}

    def fake_entry_points(*, group):
        seen["group"] = group
        return eps

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    registry._reset_for_tests()
    try:
        assert "dummy-plugin" in list_adapters()
        assert seen["group"] == "repalign.adapters"
        assert get_adapter("dummy-plugin") is DummyAdapter
        assert "broken-plugin" not in list_adapters()  # logged, not fatal
    finally:
        registry._reset_for_tests()


def test_register_rejects_name_clash():
    class Clash(DummyAdapter):
        name = "hf-text"

    list_adapters()
    with pytest.raises(ValueError, match="taken"):
        registry.register_adapter(Clash)


def test_layerinfo_validation():
    with pytest.raises(ValueError, match="text- or vision-shaped"):
        LayerInfo("fused.0", "f.0", "fused", 1, 0.5)
    assert LayerInfo("fused.0", "f.0", "fused", 1, 0.5, tokens="vision").tokens == "vision"
    with pytest.raises(ValueError, match="relative_depth"):
        LayerInfo("t", "t", "text", 1, 1.5)
