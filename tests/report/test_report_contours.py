"""Contour lines for the scaling page: lattice averaging, missing cells, cell edges, levels."""

from __future__ import annotations

import numpy as np
import pytest

from lmpipe.report import contours


def test_lattice_averages_repeats_and_leaves_missing_nodes_nan() -> None:
    x = np.array([10, 10, 100, 1000, 10, 100])
    y = np.array([5, 5, 5, 5, 50, 50])
    z = np.array([0.2, 0.4, 0.5, 0.9, 0.1, np.nan])   # a NaN measurement is ignored
    lx, ly, mean, count = contours.lattice(x, y, z)
    np.testing.assert_allclose(lx, [1, 2, 3])
    np.testing.assert_allclose(ly, np.log10([5, 50]))
    np.testing.assert_allclose(mean[0], [0.3, 0.5, 0.9])
    assert mean[1, 0] == pytest.approx(0.1) and np.isnan(mean[1, 1:]).all()
    assert count.tolist() == [[2, 1, 1], [1, 0, 0]]


def test_many_distinct_values_are_binned_in_log_space() -> None:
    rng = np.random.default_rng(0)
    x = 10 ** rng.uniform(4, 6, 500)           # parameters that are not on a lattice
    y = np.repeat([150.0, 600.0], 250)
    lx, ly, _, count = contours.lattice(x, y, np.full(500, 0.5))
    assert len(lx) <= contours.MAX_NODES and len(ly) == 2 and count.sum() == 500


def test_cells_reach_half_way_to_their_neighbours_in_log_space() -> None:
    lx, ly, mean, count = contours.lattice(np.array([10.0, 1000.0]), np.array([1.0, 1.0]),
                                           np.array([0.5, 0.7]))
    cells = contours.cells(lx, ly, mean, count)
    assert cells["x2"][0] == pytest.approx(100) and cells["x"][1] == pytest.approx(100)
    assert cells["x"][0] == pytest.approx(1) and cells["x2"][1] == pytest.approx(10_000)
    assert cells["value"].tolist() == [0.5, 0.7]


def test_contour_lines_cross_where_the_value_crosses_the_level() -> None:
    # accuracy rises with parameters: 0 at 1e4, 1 at 1e6, the same for every number of facts
    params = np.array([1e4, 1e5, 1e6] * 3)
    facts = np.repeat([100.0, 1000.0, 10_000.0], 3)
    acc = np.tile([0.0, 0.5, 1.0], 3)
    lines = contours.contour_lines(*contours.lattice(params, facts, acc)[:3], levels=(0.25, 0.5))
    assert set(lines["level"]) == {0.25, 0.5}
    half = lines[lines["level"] == 0.5]
    np.testing.assert_allclose(half["x"], 1e5)         # vertical line through the middle column
    assert half["y"].min() == pytest.approx(100) and half["y"].max() == pytest.approx(10_000)
    quarter = lines[lines["level"] == 0.25]
    np.testing.assert_allclose(quarter["x"], 10 ** 4.5)  # linear in log10(parameters)
    labels = contours.line_labels(lines)
    assert labels["text"].tolist() == ["0.25", "0.5"]


def test_missing_nodes_are_masked_and_a_one_row_lattice_has_no_lines() -> None:
    params = np.array([1e4, 1e5, 1e4, 1e5])
    facts = np.array([100.0, 100.0, 1000.0, 1000.0])
    # one corner missing: only the triangle of the three measured corners is contoured
    lines = contours.contour_lines(*contours.lattice(params, facts,
                                                     np.array([0.0, 1.0, 0.0, np.nan]))[:3])
    assert not lines.empty
    assert ((np.log10(lines["x"]) - 4) + (np.log10(lines["y"]) - 2) <= 1 + 1e-9).all()
    # two (opposite) corners missing: nothing to interpolate
    two = contours.lattice(params, facts, np.array([0.0, np.nan, np.nan, 1.0]))
    assert two[2].shape == (2, 2) and contours.contour_lines(*two[:3]).empty
    one_row = contours.lattice(np.array([1e4, 1e5]), np.array([100.0, 100.0]),
                               np.array([0.0, 1.0]))
    assert contours.contour_lines(*one_row[:3]).empty
    assert len(contours.cells(*one_row)) == 2


def test_lattice_range_gives_each_nodes_lowest_and_highest() -> None:
    x = np.array([10, 10, 10, 100, 10])
    y = np.array([5, 5, 5, 5, 50])
    z = np.array([0.2, 0.6, 0.4, 0.9, np.nan])   # three replicates at (10, 5); a NaN is ignored
    low, high = contours.lattice_range(x, y, z)
    lx, ly, mean, count = contours.lattice(x, y, z)
    assert low.shape == high.shape == mean.shape == (1, 2)   # (10, 50) was never measured
    np.testing.assert_allclose(low[0], [0.2, 0.9])
    np.testing.assert_allclose(high[0], [0.6, 0.9])
    cells = contours.cells(lx, ly, mean, count, low, high)
    assert cells[["value", "lo", "hi", "n"]].values.tolist() == [[pytest.approx(0.4), 0.2, 0.6, 3],
                                                                 [0.9, 0.9, 0.9, 1]]
    assert "lo" not in contours.cells(lx, ly, mean, count)    # without a range: as before
