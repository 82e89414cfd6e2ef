"""The module adapter from the command line: a package.module:callable factory, weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.models import ModuleAdapter, get_adapter
from repalign.models.module_factory import build_from_factory
from repalign.models.weights import load_weights
from repalign.store.features import open_features
from tests.models.test_module_adapter import TinyCNN

FACTORY = "tests.models.test_module_factory:tiny_cnn"


def tiny_cnn() -> TinyCNN:
    return TinyCNN()


def test_factory_specs_and_their_errors():
    assert isinstance(build_from_factory(FACTORY), TinyCNN)
    for spec, message in [
        ("tests.models.test_module_factory", "must look like package.module:callable"),
        ("no_such_package.x:y", "cannot import 'no_such_package.x'"),
        ("tests.models.test_module_factory:nothing", "has no 'nothing'"),
        ("tests.models.test_module_factory:FACTORY", "is not callable"),
        ("builtins:dict", "returned a dict, not an nn.Module"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_from_factory(spec)
    with pytest.raises(ValueError, match="refused its arguments"):
        build_from_factory(FACTORY, {"depth": 3})


@pytest.mark.parametrize("kind", ["safetensors", "torch", "torch-nested"])
def test_weights_load_from_safetensors_or_torch_files(tmp_path, kind):
    source = TinyCNN()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pt")
    if kind == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if kind == "torch-nested" else state, path)
    target = TinyCNN()
    load_weights(target, path)
    for k, v in target.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_that_do_not_fit_are_refused(tmp_path):
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="do not fit TinyCNN: missing"):
        load_weights(TinyCNN(), tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(TinyCNN(), tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_weights(TinyCNN(), tmp_path / "missing.pt")


def test_load_builds_the_model_and_defaults_to_its_top_level_modules():
    assert get_adapter("module") is ModuleAdapter
    adapter = ModuleAdapter.load(vision_model=FACTORY, image_size=32)
    top = [name for name, _ in TinyCNN().named_children()]
    assert [i.module_path for i in adapter.layers()] == top
    assert adapter.name == f"module:{FACTORY}"
    text = ModuleAdapter.load(text_model=FACTORY, layers="stem", collate=lambda s: None)
    assert text.layers()[0].name == "text.stem"
    with pytest.raises(ValueError, match="needs one model factory"):
        ModuleAdapter.load(text_model=FACTORY, vision_model=FACTORY)
    with pytest.raises(ValueError, match="needs one model factory"):
        ModuleAdapter.load()


def test_extract_from_the_command_line(tmp_path):
    out = tmp_path / "cnn.nc"
    args = ["extract", "--model", "module", "--vision-model", FACTORY,
            "--model-arg", 'layers=["stem", "stages.*"]', "--model-arg", "image_size=32",
            "--data", "synthetic:12", "--batch-size", "4", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_features(out) as ds:
        names = [str(n) for n in ds.data_vars]
        assert names == ["vision.stem", "vision.stages.0", "vision.stages.1"]
        assert ds.attrs["model"] == f"module:{FACTORY}"
        assert ds["vision.stem"].shape[0] == 12


def test_weights_of_other_shapes_are_refused_clearly(tmp_path):
    state = TinyCNN().state_dict()
    state["head.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="do not fit TinyCNN"):
        load_weights(TinyCNN(), tmp_path / "w.pt")
