"""record(): layer selection, hook lifetime, early stop, tuple outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from repalign.extract.hooks import record, select_layers
from repalign.models.base import LayerInfo


class CoAttn(nn.Module):
    """Returns a (text, vision) tuple, like a co-attention block."""

    def forward(self, t, v):
        return (t + v.mean(1, keepdim=True), v + t.mean(1, keepdim=True))


class TwoStream(nn.Module):
    """A toy two-stream model: per-stream towers, a fused block, then a tail."""

    def __init__(self) -> None:
        super().__init__()
        self.text = nn.Linear(4, 4)
        self.vision = nn.Linear(4, 4)
        self.co = CoAttn()
        self.tail = nn.Linear(4, 4)
        self.tail_calls = 0

    def forward(self, t, v):
        both = self.co(self.text(t), self.vision(v))
        self.tail_calls += 1
        return self.tail(both[0])


def _model():
    torch.manual_seed(0)
    return TwoStream()


LAYERS = [
    LayerInfo("text.tower.0", "text", "text", 1, 0.5),
    LayerInfo("vision.tower.0", "vision", "vision", 1, 0.5),
    LayerInfo("text.fusion.0", "co", "fused", 2, 1.0, tokens="text", output_index=0),
    LayerInfo("vision.fusion.0", "co", "fused", 2, 1.0, tokens="vision", output_index=1),
    LayerInfo("text.tail", "tail", "text", 3, 1.0),
]


def test_select_by_name_glob_regex_and_order():
    assert [i.name for i in select_layers(LAYERS, ["text.tail"])] == ["text.tail"]
    assert [i.name for i in select_layers(LAYERS, ["*.fusion.*"])] == [
        "text.fusion.0",
        "vision.fusion.0",
    ]
    # result keeps forward order, not pattern order, and no duplicates
    got = select_layers(LAYERS, ["re:vision\\..*", "text.tower.0", "vision.*"])
    assert [i.name for i in got] == ["text.tower.0", "vision.tower.0", "vision.fusion.0"]
    assert select_layers(LAYERS, None) == LAYERS


def test_select_no_match_suggests():
    with pytest.raises(ValueError, match="Did you mean 'text.tower.0'") as err:
        select_layers(LAYERS, ["text.towr.0"])
    assert "matches no layer" in str(err.value) and "`repalign layers MODEL`" in str(err.value)
    with pytest.raises(ValueError, match="Did you mean 'vision.tower.0' or 'vision.fusion.0'"):
        select_layers(LAYERS, ["re:vision.tower.O"])  # regex typo: hint on the bare pattern
    with pytest.raises(ValueError, match="not a valid regex"):
        select_layers(LAYERS, ["re:("])


def test_tuple_outputs_and_per_stream_masks():
    m = _model()
    t, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    tmask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    with record(m, LAYERS, "mean") as rec, torch.no_grad():
        feats = rec.run(lambda: m(t, v), masks={"text": tmask, "vision": None})
        tt, vv = m.text(t), m.vision(v)
        ft, fv = m.co(tt, vv)
    w = tmask.unsqueeze(-1).float()
    torch.testing.assert_close(feats["text.fusion.0"], (ft * w).sum(1) / w.sum(1))
    torch.testing.assert_close(feats["vision.fusion.0"], fv.mean(1))


def test_hooks_removed_on_exit_and_on_error():
    m = _model()
    with record(m, LAYERS, "mean"):
        assert m.text._forward_hooks
    assert not any(mod._forward_hooks for mod in m.modules())
    with pytest.raises(RuntimeError, match="boom"), record(m, LAYERS, "mean") as rec:
        rec.run(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not any(mod._forward_hooks for mod in m.modules())


def test_stop_early_skips_the_rest_of_the_forward():
    m = _model()
    t, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    wanted = select_layers(LAYERS, ["*.fusion.0"])
    with record(m, wanted, "cls", stop_early=True) as rec, torch.no_grad():
        feats = rec.run(lambda: m(t, v))
    assert m.tail_calls == 0 and set(feats) == {"text.fusion.0", "vision.fusion.0"}
    with record(m, wanted, "cls", stop_early=False) as rec, torch.no_grad():
        again = rec.run(lambda: m(t, v))
    assert m.tail_calls == 1
    torch.testing.assert_close(feats, again)


def test_layer_not_called_is_reported():
    m = _model()
    ghost = [LayerInfo("text.ghost", "tail", "text", 1, 1.0)]
    with record(m, ghost, "mean") as rec, pytest.raises(RuntimeError, match="not called"):
        rec.run(lambda: m.text(torch.randn(1, 2, 4)))
    with (
        pytest.raises(ValueError, match="no submodule"),
        record(m, [LayerInfo("x", "nope", "text", 1, 1.0)]),
    ):
        pass


def test_calls_outside_run_are_not_recorded_nor_stopped():
    m = _model()
    t, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with record(m, LAYERS[:1], "mean", stop_early=True) as rec, torch.no_grad():
        m(t, v)  # a plain call inside the block runs to the end
        assert m.tail_calls == 1
        assert set(rec.run(lambda: m(t, v))) == {"text.tower.0"}
        assert m.tail_calls == 1  # this one stopped after text.tower.0
