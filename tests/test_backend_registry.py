"""One registration convention for backends and trackers (as timm's ``@register_model``): a decorator beside the
implementation, a taken name is an error, keyword arguments reach the factory unchanged."""
from __future__ import annotations

import ast
import functools
import logging
from pathlib import Path

import pytest

import cosettle
from cosettle import FeatureBackend, UserError, list_backends, load_backend, register_backend
from cosettle.backends import registry
from cosettle.backends.dsift import DenseSiftBackend
from tracker import build_tracker

BACKENDS = Path(registry.__file__).parent


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, restored after the test whatever the test registered."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))


def test_registering_a_taken_backend_name_is_an_error(scratch_registry):
    before = registry._REGISTRY["dsift"]
    with pytest.raises(ValueError, match="backend 'dsift' is already registered .*DenseSiftBackend"):
        register_backend("dsift", "another dsift")(lambda **kw: None)
    with pytest.raises(ValueError, match="'dinov2_vits14' is already registered .*TimmViTBackend"):
        register_backend("dinov2_vits14")(lambda **kw: None)
    with pytest.raises(ValueError, match="timm family 'vit' is already served"):
        registry.register_timm_family("vit")(DenseSiftBackend)
    assert registry._REGISTRY["dsift"] == before and list_backends()["dsift"].startswith("weight-free")


def test_keyword_arguments_reach_the_dsift_backend(caplog):
    with caplog.at_level(logging.WARNING, logger="cosettle.backends.dsift"):
        b = load_backend("dsift", patch_size=8, stride=4, color_weight=0.25, weights="random", layer=3)
    assert (b.patch_size, b.stride, b.color_weight) == (8, 4, 0.25)
    # the old factory dropped weights and layer before the backend saw them: now dsift names them
    assert "dsift ignores weights='random'" in caplog.text and "dsift ignores layer=3" in caplog.text
    with pytest.raises(UserError, match=r"backend 'dsift' takes no argument 'strid'"):
        load_backend("dsift", strid=4)  # a typo was silently ignored before


def test_every_builtin_registers_beside_its_implementation():
    """Each name's factory is its backend class (or the class with the timm name bound), so the registration
    sits in the module that defines the class; the registry module itself imports no implementation."""
    names = list_backends()
    assert {"dsift", "efficientnet_lite0", "dinov2_vits14", "dino_vitb8", "clip_vitb16", "dinov3_vits16",
            "resnet50", "convnext_tiny"} <= set(names)
    for name in names:
        factory = registry.backend_entry(name).factory
        cls = factory.func if isinstance(factory, functools.partial) else factory
        assert isinstance(cls, type) and issubclass(cls, FeatureBackend), name
        assert cls.__module__ != registry.__name__ and cls.__module__.startswith("cosettle.backends."), name
    assert {f: c.__name__ for f, c in registry._FAMILIES.items()} == {
        "vit": "TimmViTBackend", "dinov3": "TimmDinoV3Backend", "cnn": "TimmCNNBackend"}
    tree = ast.parse((BACKENDS / "registry.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert imported <= {"base", None}, imported  # from .base only: no implementation module


def test_curated_names_pass_their_keywords_to_the_class(scratch_registry):
    seen = {}

    class Probe(FeatureBackend):
        def __init__(self, timm_name, *, name=None, stride=None, weights=None):
            seen.update(timm_name=timm_name, name=name, stride=stride, weights=weights)

        def forward_batch(self, x):
            return x

    registry.register_timm_names({"probe_vit": "vit_probe.tag"}, Probe)
    assert isinstance(load_backend("probe_vit", stride=7, weights="random"), Probe)
    assert seen == {"timm_name": "vit_probe.tag", "name": "probe_vit", "stride": 7, "weights": "random"}
    with pytest.raises(UserError, match=r"'probe_vit' takes no argument 'layer'.*its arguments: name, stride"):
        load_backend("probe_vit", layer=2)


def test_a_users_backend_registered_in_its_own_module(scratch_registry):
    @register_backend("mine")
    class Mine(FeatureBackend):
        """a user's backend (its docstring's first line is the description)"""

        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def forward_batch(self, x):
            return x

    assert cosettle.list_backends()["mine"] == "a user's backend (its docstring's first line is the description)"
    assert load_backend("mine", anything=1, stride=4).kwargs == {"anything": 1, "stride": 4}


def test_tracker_factories_pass_keyword_arguments_through():
    # the static factory dropped them; every tracker factory now hands them to its class (whose constructor
    # refuses an unknown one: had the factory dropped it, no error would be raised)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        build_tracker("static", bogus=1)
