"""The one precision decision (device.use_bf16) and the stages that ask it."""
from __future__ import annotations

import pytest
import torch

from rewardprompt import device as device_mod
from rewardprompt.device import CPU_BF16_ENV, cpu_has_fast_bf16, pick_dtype, use_bf16


@pytest.mark.parametrize("forced, cpu_bf16, want", [("0", True, False), ("1", True, True),
                                                     ("0", False, False), ("1", False, False)])
def test_cpu_bf16_follows_the_env_override_and_the_flag(monkeypatch, forced, cpu_bf16, want):
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    for dev in ("cpu", torch.device("cpu")):
        assert use_bf16(dev, cpu_bf16=cpu_bf16) is want


@pytest.mark.parametrize("native", [False, True])
def test_a_cpu_without_native_bf16_never_gets_bf16(monkeypatch, native):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)  # let the probe decide
    monkeypatch.setattr(device_mod, "_probe_cpu_bf16", lambda: native)
    assert cpu_has_fast_bf16() is native
    assert use_bf16("cpu") is native
    assert use_bf16("cpu", cpu_bf16=False) is False
    assert pick_dtype(torch.device("cpu")) == torch.float32  # CPU weights stay fp32 either way


def test_an_invalid_override_falls_back_to_the_probe(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    monkeypatch.setattr(device_mod, "_probe_cpu_bf16", lambda: False)
    assert use_bf16("cpu") is False


@pytest.mark.parametrize("supported", [False, True])
def test_cuda_follows_the_gpu_not_the_cpu_settings(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    for forced in ("0", "1"):
        monkeypatch.setenv(CPU_BF16_ENV, forced)
        for flag in (True, False):
            assert use_bf16("cuda:0", cpu_bf16=flag) is supported
    assert use_bf16() is supported  # the default device is CUDA now
    assert pick_dtype(torch.device("cuda")) == (torch.bfloat16 if supported else torch.float32)


def test_the_default_device_and_other_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert use_bf16() is True
    assert use_bf16("meta") is False


def test_reward_models_and_set_precision_ask_use_bf16(tiny_encoder, monkeypatch):
    from rewardprompt.rewards.model import RewardModel
    from rewardprompt.rewards.train import RMTrainConfig, set_precision

    m = RewardModel.from_base(tiny_encoder, seed=0)
    assert m.device.type == "cpu"
    for forced in ("0", "1"):
        monkeypatch.setenv(CPU_BF16_ENV, forced)
        for flag in (True, False):
            m.cpu_bf16 = flag
            assert m.uses_bf16() is use_bf16(m.device, cpu_bf16=flag)
            want = forced == "1" and flag
            assert set_precision(m, RMTrainConfig(data="x", out="y", cpu_bf16=flag)) == (
                "bf16" if want else "fp32")
            assert m.cpu_bf16 is want  # recorded with the model: how it was fitted here
    monkeypatch.delenv(CPU_BF16_ENV)
    monkeypatch.setattr(device_mod, "_probe_cpu_bf16", lambda: False)
    assert set_precision(m, RMTrainConfig(data="x", out="y", cpu_bf16=True)) == "fp32"
