"""Tokenising kernels without Spark: numpy references for every rule."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.tokenize import kernels as K


def _frame(**columns) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    return pl.DataFrame({"_row_id": np.arange(n, dtype=np.int64), **columns})


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_tokens_equal_numpy_searchsorted_on_every_row(rng):
    x = np.concatenate([rng.normal(size=5000), rng.standard_t(2, size=5000) * 10])
    edges = np.quantile(x[:3000], np.linspace(0, 1, 65))  # fit on part: the rest has out-of-range values
    bins = K.ColumnBins("x", edges)
    tok = K.tokenize_values(pl.Series(x), bins)
    reference = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 63)
    np.testing.assert_array_equal(tok.tokens, reference)
    np.testing.assert_array_equal(tok.tokens, np.clip(np.digitize(x, edges) - 1, 0, 63))
    np.testing.assert_array_equal(tok.out_of_range, (x > edges[-1]).astype(int) - (x < edges[0]).astype(int))
    assert (tok.out_of_range != 0).sum() > 0


@pytest.mark.parametrize("shape", ["normal", "lognormal", "ties", "heavy", "crowded", "two_edges", "ulp"])
def test_bin_lookup_equals_searchsorted_on_every_value(rng, shape):
    """The guide-table lookup against numpy.searchsorted(side="right"), including its fallbacks."""
    n = 200_000
    x = {
        "normal": lambda: rng.normal(size=n),
        "lognormal": lambda: np.exp(rng.normal(size=n)),
        "ties": lambda: np.round(rng.normal(size=n), 1),
        "heavy": lambda: rng.standard_t(1.2, size=n),
        # 90 % of the edges in a sliver of a wide range: two cells hold too many edges -> binary search
        "crowded": lambda: np.r_[rng.normal(size=n - 2000) * 1e-6, rng.uniform(-1e6, 1e6, size=2000)],
        "two_edges": lambda: rng.normal(size=n),
        "ulp": lambda: 1.0 + rng.integers(-50, 50, size=n) * np.finfo(float).eps,
    }[shape]()
    edges = np.unique(np.quantile(x, np.linspace(0, 1, 3 if shape == "two_edges" else 257)))
    inner = edges[1:-1]
    probe = np.r_[x, inner, np.nextafter(inner, -np.inf), np.nextafter(inner, np.inf), -1e308, 1e308, 0.0]
    lookup = K.BinLookup(inner)
    assert lookup.guided == (shape not in ("crowded", "two_edges"))
    np.testing.assert_array_equal(lookup(probe), np.searchsorted(inner, probe, side="right"))
    if lookup.guided:
        # the safety net: starts that overshoot (a cell computed too high) still give the exact bin
        lookup.start = np.minimum(lookup.start + 5, inner.size)
        np.testing.assert_array_equal(lookup(probe), np.searchsorted(inner, probe, side="right"))


def test_kernel_expression_equals_numpy_reference_on_every_row(rng):
    """The kernel's Polars expression against numpy, with every special value."""
    x = np.concatenate([rng.normal(size=5000), rng.standard_t(2, size=5000) * 10])
    edges = np.quantile(x[:3000], np.linspace(0, 1, 65))
    x[::97] = np.nan
    x[5::101] = np.inf
    x[7::103] = -np.inf
    x[:9] = edges[:9]  # exactly on edges
    null = np.zeros(x.size, dtype=bool)
    null[3::89] = True
    frame = pl.DataFrame({
        "_row_id": np.arange(x.size),
        "x": pl.Series(x).set(pl.Series(null), None),
        "k": np.full(x.size, 4.0),  # constant column: edges [4, 4], one bin
        "i": rng.integers(-50, 50, size=x.size),  # integer column
    })
    cols = [K.ColumnBins("x", edges), K.ColumnBins("k", np.array([4.0, 4.0])),
            K.ColumnBins("i", np.array([-10.0, 0.0, 10.0]))]
    got = K.tokenize_kernel(cols, dtype=pl.Int16)(frame)
    assert got.columns == ["_row_id", "x", "k", "i"] and got.schema["x"] == pl.Int16
    ref = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 63)
    ref[np.isnan(x)] = 64 + K.NAN_OFFSET
    ref[x == np.inf] = 64 + K.POS_INF_OFFSET
    ref[x == -np.inf] = 64 + K.NEG_INF_OFFSET
    ref[null] = 64 + K.NULL_OFFSET
    np.testing.assert_array_equal(got["x"].to_numpy(), ref)
    assert (got["k"] == 0).all()
    i = frame["i"].to_numpy()
    np.testing.assert_array_equal(got["i"].to_numpy(), np.clip(np.searchsorted([-10.0, 0.0, 10.0], i, side="right") - 1, 0, 1))
    for c in cols:  # and the numpy path used by the fit statistics gives the same tokens
        np.testing.assert_array_equal(got[c.column].to_numpy(), K.tokenize_values(frame[c.column], c).tokens)


def test_edge_values_follow_side_right():
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 2.999, 3.0, 4.0])
    tok = K.tokenize_values(pl.Series(x), K.ColumnBins("x", edges))
    # a value equal to an inner edge opens the next bin; the last edge closes the last bin
    assert tok.tokens.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert tok.out_of_range.tolist() == [-1, 0, 0, 0, 0, 0, 0, 1]


def test_reserved_tokens_for_null_nan_and_infinities():
    values = pl.Series("x", [1.5, None, float("nan"), float("-inf"), float("inf"), 0.0], dtype=pl.Float64)
    bins = K.ColumnBins("x", np.array([0.0, 1.0, 2.0]))
    tok = K.tokenize_values(values, bins)
    assert tok.tokens.tolist() == [1, 2, 3, 4, 5, 0]
    assert tok.finite.tolist() == [True, False, False, False, False, True]
    assert tok.out_of_range.tolist() == [0] * 6  # infinities are reserved, not out of range
    back = K.detokenize_values(pl.Series("x", tok.tokens), bins, value="centre")
    assert back.is_null().to_list() == [False, True, False, False, False, False]
    got = back.to_numpy()
    assert got[0] == 1.5 and np.isnan(got[2]) and got[3] == -np.inf and got[4] == np.inf and got[5] == 0.5


def test_token_dtype_is_smallest_signed_type_holding_vocabulary():
    assert K.token_dtype(124) == pl.Int8  # ids 0..127
    assert K.token_dtype(125) == pl.Int16
    assert K.token_dtype(256) == pl.Int16
    assert K.token_dtype(32764) == pl.Int16
    assert K.token_dtype(32765) == pl.Int32
    kernel = K.tokenize_kernel([K.ColumnBins("x", np.linspace(0, 1, 257))], dtype=K.token_dtype(256))
    out = kernel(_frame(x=np.array([0.1, 0.9])))
    assert out.schema == pl.Schema({"_row_id": pl.Int64, "x": pl.Int16})
    with pytest.raises(ValueError, match="do not fit"):
        K.tokenize_kernel([K.ColumnBins("x", np.linspace(0, 1, 257))], dtype=pl.Int8)


def test_quantile_edges_collapse_ties_and_constant_column():
    x = np.array([0.0] * 90 + list(range(1, 11)), dtype=float)
    probs = K.quantile_probabilities(10)
    inner = np.quantile(x, probs, method="inverted_cdf")
    edges = K.quantile_edges(x.min(), inner, x.max())
    assert edges.tolist() == [0.0, 10.0]  # 0.9 quantile is 0, so all inner edges equal the minimum
    x2 = np.array([0.0] * 50 + list(np.arange(1.0, 51.0)))
    edges2 = K.quantile_edges(x2.min(), np.quantile(x2, probs, method="inverted_cdf"), x2.max())
    # the minimum and the 0.1 .. 0.5 quantiles are all 0 and collapse into one edge: 5 effective bins
    assert edges2.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert np.all(np.diff(edges2) > 0)
    const = K.quantile_edges(3.0, [3.0, 3.0], 3.0)
    assert const.tolist() == [3.0, 3.0]
    tok = K.tokenize_values(pl.Series([3.0, 2.0, 4.0]), K.ColumnBins("c", const))
    assert tok.tokens.tolist() == [0, 0, 0] and tok.out_of_range.tolist() == [0, -1, 1]


def _chronos_bucketize(x, n_bins, scale):
    """Chronos MeanScaleUniformBins._input_transform, numpy transcription (bin index, 0-based)."""
    centers = np.linspace(-15, 15, n_bins)
    boundaries = np.concatenate([[-1e20], (centers[1:] + centers[:-1]) / 2, [1e20]])
    # torch.bucketize(right=True) == numpy.searchsorted(side="right"); Chronos then subtracts
    # n_special_tokens + 1 when it maps tokens back to centres.
    return np.searchsorted(boundaries, x / scale, side="right") - 1, centers


def test_uniform_method_matches_chronos(rng):
    x = rng.normal(3.0, 20.0, size=20000)
    scale = K.uniform_scale(np.mean(np.abs(x)))
    edges = K.uniform_edges(4093, scale)
    bins = K.ColumnBins("x", edges)
    tok = K.tokenize_values(pl.Series(x), bins)
    expected, centers = _chronos_bucketize(x, 4093, scale)
    np.testing.assert_array_equal(tok.tokens, expected)
    np.testing.assert_allclose(bins.centres, centers * scale, rtol=0, atol=1e-12 * scale)
    back = K.detokenize_values(pl.Series("x", tok.tokens), bins, value="centre").to_numpy()
    np.testing.assert_allclose(back, centers[expected] * scale, rtol=0, atol=1e-12 * scale)
    assert K.uniform_scale(0.0) == 1.0 and K.uniform_scale(float("nan")) == 1.0


def test_detokenize_means_fallback_and_invalid_tokens():
    bins = K.ColumnBins("x", np.array([0.0, 1.0, 2.0, 4.0]), means=np.array([0.2, np.nan, 3.5]))
    tokens = pl.Series("x", [0, 1, 2, 3, 4, 5, 6, 7, -1, None], dtype=pl.Int16)
    mean = K.detokenize_values(tokens, bins, value="mean")
    centre = K.detokenize_values(tokens, bins, value="centre")
    assert mean.to_list()[:3] == [0.2, 1.5, 3.5]  # the empty bin falls back to its centre
    assert centre.to_list()[:3] == [0.5, 1.5, 3.0]
    # 3 = null token; 7 and -1 are outside the vocabulary; a null token stays null
    assert mean.is_null().to_list() == [False, False, False, True, False, False, False, True, True, True]


def test_round_trip_rmse_from_sums_equals_direct_and_means_beat_centres(rng):
    x = np.concatenate([rng.lognormal(size=4000), [np.nan, np.inf]])
    finite = x[np.isfinite(x)]
    edges = K.quantile_edges(finite.min(), np.quantile(finite, K.quantile_probabilities(16)), finite.max())
    bins = K.ColumnBins("x", edges)
    stats = K.fit_stats_kernel([bins])(_frame(x=x))
    agg = (
        stats.filter(pl.col("_t0") < bins.n_bins)
        .group_by("_t0")
        .agg(n=pl.len(), s=pl.col("_d0").sum(), ss=(pl.col("_d0") ** 2).sum())
        .sort("_t0")
    )
    assert agg["_t0"].to_list() == list(range(bins.n_bins))
    count, sd, ssd = agg["n"].to_numpy(), agg["s"].to_numpy(), agg["ss"].to_numpy()
    sse_mean, sse_centre = K.reconstruction_sse(bins, count, sd, ssd)
    fitted = K.ColumnBins("x", edges, means=K.bin_means(bins, count, sd))
    tokens = K.tokenize_values(pl.Series(finite), fitted).tokens
    direct_mean = np.sum((finite - fitted.bin_values("mean")[tokens]) ** 2)
    direct_centre = np.sum((finite - fitted.centres[tokens]) ** 2)
    np.testing.assert_allclose([sse_mean, sse_centre], [direct_mean, direct_centre], rtol=1e-9)
    assert sse_mean < sse_centre
    # the means are the numpy per-bin means
    np.testing.assert_allclose(fitted.means, [finite[tokens == b].mean() for b in range(bins.n_bins)], rtol=1e-12)


def test_tied_bin_mean_is_exact():
    x = np.array([0.1] * 7 + [0.3, 0.7])
    bins = K.ColumnBins("x", np.array([0.1, 0.5, 0.7]))
    stats = K.fit_stats_kernel([bins])(_frame(x=x))
    assert stats["_d0"].to_list()[:7] == [0.0] * 7
    count = np.bincount(stats["_t0"].to_numpy(), minlength=2)
    sums = np.bincount(stats["_t0"].to_numpy(), weights=stats["_d0"].to_numpy(), minlength=2)
    assert K.bin_means(bins, count, sums)[0] == pytest.approx((0.1 * 7 + 0.3) / 8, rel=1e-15)
    assert K.bin_means(bins, np.array([3, 0]), np.array([0.0, 0.0])).tolist()[0] == 0.1


def test_kernels_are_row_local_whatever_the_batches(rng):
    x = rng.normal(size=1000)
    x[::17] = np.nan
    frame = _frame(x=x, y=rng.integers(-5, 5, size=1000))
    cols = [K.ColumnBins("x", np.linspace(-2, 2, 9)), K.ColumnBins("y", np.array([-5.0, 0.0, 4.0]))]
    kernel = K.tokenize_kernel(cols, dtype=pl.Int8)
    whole = kernel(frame)
    pieces = pl.concat([kernel(frame.slice(o, 137)) for o in range(0, 1000, 137)])
    assert whole.equals(pieces)
    back = K.detokenize_kernel(cols, value="mean")
    assert back(whole).equals(pl.concat([back(whole.slice(o, 99)) for o in range(0, 1000, 99)]))


def test_partial_sums_do_not_depend_on_batching(rng):
    """fit_partial_kernel: counts and fixed-point sums are exact whatever the batches."""
    x = rng.normal(size=3000)
    x[::31] = np.nan
    x[5::37] = 9.0  # above the last edge: out of range
    frame = _frame(x=x, y=np.round(rng.normal(size=3000), 1))
    cols = [K.ColumnBins("x", np.linspace(-2, 2, 17)), K.ColumnBins("y", np.array([-1.0, 0.0, 0.5, 1.0]))]
    kernel = K.fit_partial_kernel(cols)

    def total(parts):
        keys = ["col", "token", "oor"]
        return pl.concat(parts).group_by(keys).agg(pl.col("n", "fixed").sum()).sort(keys)

    whole = total([kernel(frame)])
    assert whole.equals(total([kernel(frame.slice(o, 113)) for o in range(0, 3000, 113)]))
    # against the per-row statistics, summed directly
    rows = K.fit_stats_kernel(cols)(frame)
    t, o, d = rows["_t0"].to_numpy(), rows["_o0"].to_numpy(), rows["_d0"].to_numpy()
    got = whole.filter(pl.col("col") == 0)
    for r in got.iter_rows(named=True):
        sel = (t == r["token"]) & (o == r["oor"])
        assert r["n"] == sel.sum()
        if r["oor"] == 0 and r["token"] < cols[0].n_bins:
            assert r["fixed"] == int(np.rint(d[sel] * K.OFFSET_SCALE).astype(np.int64).sum())
    assert got.filter(pl.col("oor") == 1)["n"].sum() == (x > 2.0).sum() >= (x == 9.0).sum()
    assert got.filter(pl.col("token") == cols[0].n_bins + K.NAN_OFFSET)["n"].sum() == np.isnan(x).sum()


def test_invalid_edges_are_rejected():
    with pytest.raises(ValueError, match="strictly increasing"):
        K.ColumnBins("x", np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        K.ColumnBins("x", np.array([0.0, np.inf]))
    with pytest.raises(KeyError, match="lacks"):
        K.tokenize_kernel([K.ColumnBins("x", np.array([0.0, 1.0]))], dtype=pl.Int8)(pl.DataFrame({"x": [1.0]}))
