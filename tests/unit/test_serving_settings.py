"""The settings' wire format (typed specs, bounds) and what the plugins say they can do (caps, refusals)."""

from __future__ import annotations

import json

import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.limits import MAX_HIDDEN, MAX_INTERVENTIONS, MAX_SETTINGS_CHARS
from l2reason.serving.capabilities import SUPPORTED_INTERVENTIONS, caps, check_supported, read_settings
from l2reason.serving.info import EngineModelInfo
from l2reason.serving.settings import SETTINGS_KEY, EngineSettings
from l2reason.serving.slots import SlotRuntime
from l2reason.techniques.controllers import CONTROLLERS
from l2reason.techniques.specs import ALRRSpec, SAEAblateSpec, StaticSteerSpec

ABLATE = {"kind": "sae_ablate", "sae": "sae.safetensors", "layer": 1, "features": [2]}


def _decode(settings: object) -> EngineSettings | None:
    return EngineSettings.decode({SETTINGS_KEY: settings if isinstance(settings, str) else json.dumps(settings)})


def test_interventions_are_typed_specs_parsed_once_and_dumped_on_encode():
    s = EngineSettings(interventions=[{"kind": "alrr", "K": 2}, StaticSteerSpec(vectors={3: [1.0, 2.0]}), ABLATE])
    a, st, ab = s.interventions
    assert isinstance(a, ALRRSpec) and a.K == 2 and isinstance(ab, SAEAblateSpec)
    assert s.specs() == [a, st, ab] and s.specs()[0] is a  # no re-parse
    back = EngineSettings.decode(s.encode())
    assert back == s and back.interventions[1].vectors == {3: [1.0, 2.0]}
    assert json.loads(s.encode()[SETTINGS_KEY])["interventions"][0] == a.model_dump(mode="json")
    # the controller group: deterministic, the same for equal specs however they were written, without ablations
    same = EngineSettings(interventions=[StaticSteerSpec(vectors={3: [1.0, 2.0]}), {"K": 2, "kind": "alrr"}][::-1])
    assert same.group_key() == EngineSettings(interventions=[a, st]).group_key() == s.group_key()
    assert s.controller_specs() == [a, st]
    assert EngineSettings(interventions=[ABLATE]).group_key() == "[]"


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        ("x" * (MAX_SETTINGS_CHARS + 1), "characters, more than"),
        ("[" * 100_000 + "]" * 100_000, "recursion limit"),
        ({"interventions": [{"kind": "alrr"}] * (MAX_INTERVENTIONS + 1)}, "at most 64 interventions"),
        ({"interventions": [{"kind": "static_steer", "vectors": {"1": [0.0] * (MAX_HIDDEN + 1)}}]}, "longer than"),
        ({"interventions": [{"kind": "static_steer", "vectors": {str(i): [0.0] for i in range(1025)}}]}, "1024"),
        ({"interventions": [{"kind": "alrr", "layers": list(range(1025))}]}, "more than 1024 layers"),
        ({"interventions": [{**ABLATE, "features": list(range(4097))}]}, "features"),
        ({"interventions": [{**ABLATE, "sae": "/etc/passwd"}]}, "relative name"),
        ({"interventions": [{**ABLATE, "sae": "../x"}]}, "relative name"),
        ({"layers": list(range(2000))}, "layers must be absolute indices"),
        ({"interventions": {"kind": "alrr"}}, "must be a list"),
        ({"probe": "yes please"}, "probe"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_decode_bounds_what_one_request_can_make_the_server_hold(raw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        _decode(raw)
    assert len(str(e.value)) < 600  # one short line, no echo of the input


def test_settings_must_be_a_json_string():
    with pytest.raises(ConfigError, match="expected a JSON string"):
        EngineSettings.decode({SETTINGS_KEY: {"layers": [1]}})
    assert EngineSettings.decode({SETTINGS_KEY: '{"layers": [1], "probe": true}'}).probe


def test_one_supported_list_and_the_probe_record():
    assert SUPPORTED_INTERVENTIONS == set(CONTROLLERS) | {"sae_ablate"}
    c = caps()
    assert c["interventions"] == sorted(SUPPORTED_INTERVENTIONS) and isinstance(c["plugin"], str) and c["plugin"]
    s = EngineSettings(layers=[0], probe=True)
    assert check_supported(s, "X") is s and check_supported(None, "X") is None
    assert isinstance(read_settings({SETTINGS_KEY: "{bad"}, "X"), ConfigError) and read_settings({}, "X") is None
    # the prefill's record (the first one) carries caps; decode records do not; other requests never
    rt = SlotRuntime(EngineModelInfo("X", num_layers=2, hidden_size=4, dtype=torch.float32), num_slots=3)
    plan = rt.plan([1, 2], ["p", "q"], [s, EngineSettings(layers=[0])], decode=False)
    rt.step_layer(plan, 0, torch.ones(2, 4), mlp_out=None, rerun=None)
    first, other = rt.records(plan)
    assert first == {"n": [2.0], "caps": c} and other == {"n": [2.0]}
    plan = rt.plan([1], ["p"], [s], decode=True)
    rt.step_layer(plan, 0, torch.ones(1, 4), mlp_out=None, rerun=None)
    assert rt.records(plan) == [{"n": [2.0]}]


def test_engine_model_info_refuses_calibrated_thresholds_naming_the_engine():
    info = EngineModelInfo("SGLang", num_layers=2, hidden_size=4, dtype=torch.float32)
    rt = SlotRuntime(info, num_slots=2)
    cal = EngineSettings(interventions=[{"kind": "erss", "threshold": {"mode": "calibrated"}}])
    [rec] = rt.records(rt.plan([1], ["r"], [cal], decode=True))
    assert "not available in the SGLang plugin" in rec["e"]
