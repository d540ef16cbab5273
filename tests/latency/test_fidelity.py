"""Fidelity figures: Spearman with ties, error figures, noise ceiling, and the calibration choice."""

import math

import pytest

from edgeprune.latency.fidelity import choose_calibration, error_figures, noise_ceiling, spearman


def test_spearman_perfect_and_reversed():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 3, 1]) == pytest.approx(-1.0)


def test_spearman_with_ties_hand_computed():
    # ranks a: 0 1 2 3 4; ranks b (two 7s share 2.5): 0 1 2.5 4 2.5
    # deviations from 2: a -2 -1 0 1 2, b -2 -1 .5 2 .5 -> cov 8, var 10 and 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(10 * 9.5), abs=1e-12)


def test_spearman_ties_on_both_sides():
    # a ranks: 0.5 0.5 2 3; b ranks: 0 1.5 1.5 3
    # deviations from 1.5: a -1 -1 .5 1.5; b -1.5 0 0 1.5 -> cov 3.75, var 4.5 and 4.5
    assert spearman([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(3.75 / 4.5, abs=1e-12)


def test_spearman_is_rank_based():
    a = [0.1, 0.5, 0.2, 0.9, 0.3]
    assert spearman(a, [x**3 for x in a]) == pytest.approx(1.0)


def test_spearman_degenerate():
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([], []))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_error_figures_exact():
    predicted = [109, 92, 100, 80]
    measured = [100, 90, 95, 100]
    out = error_figures(predicted, measured)
    rel = [9 / 100, 2 / 90, 5 / 95, 20 / 100]
    assert out["n"] == 4
    assert out["mape"] == pytest.approx(sum(rel) / 4, abs=1e-12)
    assert out["within_10"] == 0.75
    assert out["within_5"] == 0.25
    # ranks p: 3 1 2 0; ranks m (two 100s share 2.5): 2.5 0 1 2.5 -> cov 0.5, var 5 and 4.5
    assert out["spearman"] == pytest.approx(0.5 / math.sqrt(5 * 4.5), abs=1e-12)


def test_error_figures_perfect_and_empty():
    out = error_figures([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert out == {"n": 3, "mape": 0.0, "within_10": 1.0, "within_5": 1.0, "spearman": pytest.approx(1.0)}
    assert error_figures([], []) == {"n": 0}


def test_error_figures_relative_to_measured():
    # 25 % over 100 measured, and 20 % under 125 measured: relative to the measurement, not the prediction
    out = error_figures([125, 100], [100, 125])
    assert out["mape"] == pytest.approx((0.25 + 0.2) / 2)
    assert out["within_10"] == 0.0


def test_noise_ceiling():
    rounds = [[1.0, 1.05], [1.0, 1.2], [2.0], [1.0, 0.95], [3.0, 3.0, 9.0]]
    # pairs use the first two rounds: 5 %, 20 %, 5.3 % (relative to the smaller), 0 % -> 3 of 4 agree
    assert noise_ceiling(rounds) == pytest.approx(0.75)
    assert noise_ceiling([[1.0], [2.0]]) is None
    assert noise_ceiling([]) is None
    assert noise_ceiling([[1.0, 1.0999]]) == 1.0
    assert noise_ceiling([[1.0, 1.1001]]) == 0.0


def F(cells, on=0.0, off=0.0):
    return {"cells_ms": cells, "layout_on_step_m": on, "layout_off_step_m": off}


def test_calibration_picks_additive_when_the_gap_is_constant():
    # dense: 10 ms predicted, 12 measured; variants follow measured = raw + 2
    out = choose_calibration(F(10.0), 12.0, [F(5.0), F(8.0)], [7.0, 10.0])
    assert out["kind"] == "additive"
    assert out["value"] == pytest.approx(2.0)
    assert out["ratio"] == pytest.approx(1.2) and out["additive_ms"] == pytest.approx(2.0)
    assert out["choice_mape"]["additive"] == pytest.approx(0.0)
    assert out["choice_mape"]["ratio"] == pytest.approx((abs(6 - 7) / 7 + abs(9.6 - 10) / 10) / 2)
    assert out["n_calibration_variants"] == 2
    assert out["dense_measured_ms"] == 12.0 and out["dense_predicted_ms"] == 10.0
    assert [p["measured_ms"] for p in out["points"]] == [12.0, 7.0, 10.0]  # kept for re-scoring other rules


def test_calibration_picks_ratio_when_the_gap_scales():
    out = choose_calibration(F(10.0), 12.0, [F(5.0), F(8.0)], [6.0, 9.6])
    assert out["kind"] == "ratio"
    assert out["value"] == pytest.approx(1.2)
    assert out["choice_mape"]["ratio"] == pytest.approx(0.0, abs=1e-12)
    assert out["choice_mape"]["additive"] > 0


def test_calibration_without_variants_is_ratio():
    out = choose_calibration(F(4.0), 5.0, [], [])
    assert out["kind"] == "ratio" and out["value"] == pytest.approx(1.25)
    assert "choice_mape" not in out


def test_calibration_picks_layout_fit_when_layout_changes_explain_the_gap():
    # measured = 0.9·Σcells − 0.5·L_on + 1.0·L_off: a ratio or a constant cannot follow it, the fit can.
    def truth(f):
        return 0.9 * f["cells_ms"] - 0.5 * f["layout_on_step_m"] + 1.0 * f["layout_off_step_m"]

    dense = F(20.0, on=4.0)
    calib = [F(12.0, on=3.0), F(9.0, on=0.5, off=2.0), F(7.0, on=2.0), F(10.0, on=1.0, off=3.0)]
    out = choose_calibration(dense, truth(dense), calib, [truth(f) for f in calib])
    assert out["kind"] == "layout"
    assert out["choice_mape"]["layout"] == pytest.approx(0.0, abs=1e-9)
    assert out["choice_mape"]["ratio"] > 0.01 and out["choice_mape"]["additive"] > 0.01
    assert out["value"] == pytest.approx(0.9)
    assert out["layout_on_step_ms_per_m"] == pytest.approx(-0.5)
    assert out["layout_off_step_ms_per_m"] == pytest.approx(1.0)


def R(on, other, on_m=0.0, off_m=0.0):
    return dict(F(on + other, on_m, off_m), cells_on_step_ms=on, cells_other_ms=other)


def test_calibration_picks_regime_when_on_step_convs_run_faster_in_the_model():
    # measured = 0.6·Σ on-step convs + 1.0·Σ the rest (mobilenet_v3_small at 160 px read 0.56-0.60 and ~1.0):
    # on-step variants follow 0.6, off-step ones 1.0, and no single ratio or constant follows both
    dense = R(6.0, 2.0)
    calib = [R(3.0, 1.0), R(3.5, 1.2), R(0.2, 5.0), R(0.3, 6.0), R(2.8, 0.9), R(0.1, 4.5)]
    out = choose_calibration(dense, 0.6 * 6.0 + 2.0, calib, [0.6 * f["cells_on_step_ms"] + f["cells_other_ms"]
                                                            for f in calib])
    assert out["kind"] == "regime"
    assert out["value"] == pytest.approx(0.6) and out["other_ratio"] == pytest.approx(1.0)
    assert out["choice_mape"]["regime"] == pytest.approx(0.0, abs=1e-9)
    assert out["choice_mape"]["ratio"] > 0.1 and out["choice_mape"]["additive"] > 0.05
    # 0.6·3 + 1 = 2.8 ms measured for the first on-step variant: what the table will predict for it
    from edgeprune.latency.table import apply_calibration
    assert apply_calibration(out, calib[0]) == pytest.approx(2.8)


def test_regime_fit_with_an_undetermined_coefficient_is_never_chosen():
    # every point has Σ on-step 0: its coefficient comes out 0, which is no calibration
    calib = [R(0.0, c) for c in (4.0, 5.0, 6.0)]
    out = choose_calibration(R(0.0, 8.0), 8.8, calib, [1.1 * f["cells_other_ms"] for f in calib])
    assert "regime" not in out["choice_mape"] and "outside" in out["regime_rejected"]
    assert out["kind"] == "ratio" and out["value"] == pytest.approx(1.1)


def test_layout_fit_that_discards_the_cells_is_never_chosen():
    # Measurements that only the layout terms can follow (Σ-cells coefficient near 0) are noise, not a model.
    dense = F(20.0, on=4.0)
    calib = [F(12.0, on=3.0), F(9.0, on=0.5, off=2.0), F(7.0, on=2.0), F(10.0, on=1.0, off=3.0)]

    def truth(f):
        return 0.05 * f["cells_ms"] + 2.0 * f["layout_on_step_m"] + 3.0 * f["layout_off_step_m"] + 1e-9

    out = choose_calibration(dense, truth(dense), calib, [truth(f) for f in calib])
    assert out["kind"] in ("ratio", "additive")
    assert "layout" not in out["choice_mape"] and "outside" in out["layout_rejected"]
