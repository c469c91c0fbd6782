"""The Python API: load(), stream_generate(), chat(), RadarConfig validation at both layers."""

from __future__ import annotations

import ctypes

import pytest

import radar_gguf
from radar_gguf import RadarConfig, _lib


@pytest.fixture(scope="module")
def model(model_path):
    with radar_gguf.load(model_path, ctx=2048) as m:
        yield m


def test_stream_generate_yields_tokens_with_timings(model):
    rs = list(model.stream_generate("The capital of France is", max_tokens=4, add_bos=False))
    assert 1 <= len(rs) <= 4
    assert all(isinstance(r.token, int) for r in rs)
    assert rs[-1].finish_reason in ("length", "stop")
    assert rs[-1].prompt_tps > 0 and rs[-1].generation_tps > 0
    assert "Paris" in "".join(r.text for r in rs)


def test_chat_and_prefix_reuse(model):
    msgs = [{"role": "user", "content": "What is 2+2? Answer with a number."}]
    first = model.chat(msgs, max_tokens=4)
    assert "4" in first
    n = model.n_past
    msgs += [{"role": "assistant", "content": first}, {"role": "user", "content": "And 3+3?"}]
    rs = list(model.stream_chat(msgs, max_tokens=4))
    # only the new turn is prefilled: the conversation so far stays in the context
    assert rs[0].prompt_tokens < n
    assert "6" in "".join(r.text for r in rs)


def test_radar_config_validation_names_the_parameter():
    with pytest.raises(ValueError, match="top_k"):
        RadarConfig(top_k=-1).validate()
    with pytest.raises(ValueError, match="score"):
        RadarConfig(score="fancy").validate()
    with pytest.raises(TypeError, match="no parameter"):
        RadarConfig().replace(budget=3)
    with pytest.raises(ValueError, match="mass_target"):
        RadarConfig(mass_target=1.5).validate()
    # the adaptive candidate count estimates mass from one score: union has two
    with pytest.raises(ValueError, match="rescore_mass.*union"):
        RadarConfig(score="union", rescore_max=16, rescore_mass=0.9).validate()
    RadarConfig(score="union").validate()


def test_c_api_rejects_bad_parameters(model):
    """The library validates on its own: an out-of-range value never reaches the kernels."""
    lib = _lib.bindings().llama_cpp._lib
    p = _lib._to_c(RadarConfig())
    p.n_recent = -3
    rc = lib.llama_radar_set_params(model.llama.ctx, ctypes.byref(p))
    assert rc == -6  # LLAMA_RADAR_ERR_N_RECENT
    assert b"n_recent" in lib.llama_radar_strerror(rc)
    p = _lib._to_c(RadarConfig())
    p.score = 17
    assert lib.llama_radar_set_params(model.llama.ctx, ctypes.byref(p)) == -1
    p = _lib._to_c(RadarConfig())
    p.mass_target = 1.5
    rc = lib.llama_radar_set_params(model.llama.ctx, ctypes.byref(p))
    assert rc == -13 and b"mass_target" in lib.llama_radar_strerror(rc)  # LLAMA_RADAR_ERR_MASS
    assert model.radar == _lib.radar_get(model.llama.ctx)  # the context kept its previous parameters


def test_radar_needs_flash_attention(model_path):
    with pytest.raises(RuntimeError, match="flash attention"):
        radar_gguf.load(model_path, ctx=512, flash_attn=False)


@pytest.mark.slow  # ~90 s on 2 cores: 72 sampled tokens
def test_sampling_is_seeded_and_random(model):
    """temperature > 0: the same seed repeats the text, another seed changes it."""
    prompt = "Write a list of ten random animal names:"

    def sample(seed):
        model.reset()  # same computation every time (a reused prefix re-evaluates its last token alone)
        return [r.token for r in model.stream_generate(prompt, max_tokens=24, temperature=1.0, seed=seed)]

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c
