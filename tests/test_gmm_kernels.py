"""GMM transform kernels, without Spark: references are scikit-learn, RDT and the definitions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from gmm_transform_data import (
    all_models,
    amount_model,
    category_model,
    gaussian_model,
    mixed_model,
    synthetic,
)
from scipy import stats
from sklearn import datasets
from sklearn.mixture import GaussianMixture

from pipelines.gmm import kernels as K
from pipelines.gmm.model import ColumnModel, Mode

MASK64 = (1 << 64) - 1


def _splitmix64_reference(key: int, row_id: int) -> float:
    """SplitMix64 from its definition (Vigna's splitmix64.c), in Python ints: the
    generator seeded with ``key - gamma`` and advanced ``row_id + 1`` times."""
    state = (key + (row_id & MASK64) * 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return (z >> 11) / 2**53


def _plans(models=None):
    return [K.plan_column(m) for m in (models or all_models())]


# --------------------------------------------------------------------------- uniforms


def test_uniforms_match_splitmix64_definition():
    ids = np.array([0, 1, 2, 12345, -1, -(2**63), 2**63 - 1], dtype=np.int64)
    got = K.uniforms(ids, seed=7, column="Amount")
    key = K.stream_key(7, "Amount")
    assert got.tolist() == [_splitmix64_reference(key, int(i)) for i in ids]


def test_uniforms_depend_only_on_seed_column_and_row_id():
    ids = np.arange(10_000, dtype=np.int64) * 7 - 500
    u = K.uniforms(ids, seed=1, column="a")
    perm = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(K.uniforms(ids[perm], seed=1, column="a"), u[perm])  # order-free
    assert not np.array_equal(K.uniforms(ids, seed=2, column="a"), u)
    assert not np.array_equal(K.uniforms(ids, seed=1, column="b"), u)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # different streams are uncorrelated
    assert abs(np.corrcoef(u, K.uniforms(ids, seed=1, column="b"))[0, 1]) < 0.05


# --------------------------------------------------------------------------- responsibilities and sampling


def test_responsibilities_equal_sklearn_predict_proba():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, 500), rng.normal(6, 0.3, 300), rng.lognormal(3, 1, 200)])
    gm = GaussianMixture(n_components=4, random_state=0).fit(x[:, None])
    probe = np.concatenate([x, [-1e6, 1e6, 1e200, -1e308]])  # far outside every component
    got = K.responsibilities(probe, weights=gm.weights_, means=gm.means_.ravel(), stds=np.sqrt(gm.covariances_.ravel()))
    np.testing.assert_allclose(got[: len(x)], gm.predict_proba(x[:, None]), rtol=1e-9, atol=1e-12)
    assert np.isfinite(got).all() and np.allclose(got.sum(axis=1), 1.0)


def test_sample_components_is_numpy_choice_rule():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(5) * 0.3, size=2000)
    u = rng.random(2000)
    got = K.sample_components(probs, u)
    for i in range(len(u)):  # np.random.choice: cdf of (p + 1e-6) renormalised, searchsorted right
        p = probs[i] + 1e-6
        p = p / p.sum()
        cdf = p.cumsum()
        cdf /= cdf[-1]
        assert got[i] == cdf.searchsorted(u[i], side="right")


def test_sampled_ranks_match_mean_responsibilities_over_1m_rows():
    n = 1_000_000
    model = gaussian_model("x", [0.5, 0.3, 0.2], [0.0, 2.0, 5.0], [1.0, 1.5, 2.0])
    plan = K.plan_column(model)
    x = np.random.default_rng(3).normal(1.5, 2.5, n)  # not the mixture itself: overlaps everywhere
    out = K.encode(pl.DataFrame({"_row_id": np.arange(n), "x": x}), [plan], seed=11, sampling="rdt")
    observed = np.bincount(out["x__component"].to_numpy(), minlength=3)
    # Expected counts from the definition: mean over rows of (p + 1e-6) renormalised, by rank.
    p = K.responsibilities(x, weights=plan.post_weights, means=plan.post_means, stds=plan.post_stds) + 1e-6
    p /= p.sum(axis=1, keepdims=True)
    expected = np.zeros(3)
    expected[plan.kept_ranks] = p[:, plan.post_kept].sum(axis=0)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # The test has power: the argmax (what CTGAN does not do) is rejected outright.
    argmax = np.bincount(plan.kept_ranks[p.argmax(axis=1)], minlength=3)
    assert stats.chisquare(argmax, expected).pvalue < 1e-12


# --------------------------------------------------------------------------- the RDT / CTGAN formula


def _rdt_formula(x, means, stds, component):
    """RDT ClusterBasedNormalizer._transform: (x - means) / (4 * stds), the chosen column, clipped."""
    normalized_values = (x.reshape(-1, 1) - means.reshape(1, -1)) / (4 * stds.reshape(1, -1))
    return np.clip(normalized_values[np.arange(len(x)), component], -0.99, 0.99)


def _rdt_reverse(normalized, component, means, stds):
    """RDT ClusterBasedNormalizer._reverse_transform_helper."""
    normalized = np.clip(normalized, -1, 1)
    component = np.asarray(component).round().astype(int).clip(0, len(means) - 1)
    return normalized * 4 * stds[component] + means[component]


def test_normalised_values_equal_rdt_formula():
    model = amount_model()
    plan = K.plan_column(model)
    df = synthetic(20_000, bad_rows=False)
    out = K.encode(df, [plan], seed=5, sampling="rdt")
    rank = out["amount__component"].to_numpy()
    expected = _rdt_formula(df["amount"].to_numpy(), plan.rank_mean, plan.rank_std, rank)
    np.testing.assert_array_equal(out["amount"].to_numpy(), expected)
    back = K.decode(out, [plan])["amount"].to_numpy()
    np.testing.assert_array_equal(back, _rdt_reverse(expected, rank, plan.rank_mean, plan.rank_std))


def test_agrees_with_rdt_cluster_based_normalizer():
    rdt = pytest.importorskip("rdt")
    import pandas as pd

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.lognormal(3, 0.6, 3000), rng.normal(400, 30, 1500)])
    data = pd.DataFrame({"x": x})
    cbn = rdt.transformers.ClusterBasedNormalizer(max_clusters=6, missing_value_generation=None)
    cbn.fit(data, "x")
    bgm, valid = cbn._bgm_transformer, cbn.valid_component_indicator
    means, stds = bgm.means_.ravel(), np.sqrt(bgm.covariances_).ravel()
    model = gaussian_model("x", bgm.weights_, means, stds, kept=valid)
    plan = K.plan_column(model)
    ours = K.encode(pl.DataFrame({"_row_id": np.arange(len(x)), "x": x}), [plan], seed=9, sampling="rdt")
    np.random.seed(0)  # RDT samples with the global numpy generator
    theirs = cbn.transform(data)
    # RDT's component index counts valid components in fit order; ours is the frequency rank.
    fit_order_rank = np.array([m.rank for m in sorted(model.kept, key=lambda m: m.component)])
    their_rank = fit_order_rank[theirs["x.component"].to_numpy().astype(int)]
    same = their_rank == ours["x__component"].to_numpy()
    assert same.mean() > 0.5
    np.testing.assert_array_equal(ours["x"].to_numpy()[same], theirs["x.normalized"].to_numpy()[same])
    # The inverse of the same (z, mode) is RDT's reverse_transform, to the last bit.
    rdt_in = pd.DataFrame({"x.normalized": ours["x"].to_numpy(),
                           "x.component": np.argsort(fit_order_rank)[ours["x__component"].to_numpy()]})
    np.testing.assert_array_equal(
        K.decode(ours, [plan])["x"].to_numpy(), cbn.reverse_transform(rdt_in)["x"].to_numpy()
    )


# --------------------------------------------------------------------------- tail-safe sampling


def _unlucky_rows(plan, x, *, seed, n=3_000_000):
    """Row ids whose first uniform draws, from ``p + 1e-6``, the kept mode of last rank for ``x``."""
    ids = np.arange(n, dtype=np.int64)
    u = K.uniforms(ids, seed=seed, column=plan.column)
    p = K.responsibilities(np.array([x]), weights=plan.kept_weights, means=plan.kept_means, stds=plan.kept_stds)[0]
    return ids[K.sample_components(np.tile(p, (n, 1)), u) == len(p) - 1]


def test_tail_safe_resamples_a_row_the_sampled_mode_would_clip():
    # Two far-apart kept modes: a row at 0.5 belongs to the first; the 1e-6 floor sends
    # ~1 row in a million to the second, where RDT clips it (z = -24.9) and loses it.
    plan = K.plan_column(gaussian_model("x", [0.5, 0.5], [0.0, 100.0], [1.0, 1.0]))
    ids = _unlucky_rows(plan, 0.5, seed=3)
    assert 1 <= ids.size <= 20
    df = pl.DataFrame({"_row_id": ids, "x": np.full(ids.size, 0.5)})
    rdt = K.encode(df, [plan], seed=3, sampling="rdt")
    assert rdt["x"].to_list() == [-0.99] * ids.size and rdt[K.flag_name("clipped", "x")].all()
    safe = K.encode(df, [plan], seed=3)
    assert safe[K.flag_name("resampled", "x")].all() and not safe[K.flag_name("clipped", "x")].any()
    assert safe["x"].to_list() == [0.125] * ids.size
    assert K.decode(safe, [plan])["x"].to_list() == [0.5] * ids.size
    # the other rows are untouched by the re-sample: same draws as RDT's rule
    rest = pl.DataFrame({"_row_id": np.arange(5000), "x": np.random.default_rng(0).normal(0, 1, 5000)})
    assert K.encode(rest, [plan], seed=3).drop(K.flag_name("resampled", "x")).equals(
        K.encode(rest, [plan], seed=3, sampling="rdt").drop(K.flag_name("resampled", "x")))


def test_tail_safe_clips_only_what_no_kept_mode_represents():
    plan = K.plan_column(amount_model())  # kept: 20 +- 32, 120 +- 160, 900 +- 1200; 5000 dropped
    x = np.array([1e7, 2000.0, -1e300])
    out = K.encode(pl.DataFrame({"_row_id": [0, 1, 2], "amount": x}), [plan], seed=0)
    assert out[K.flag_name("clipped", "amount")].to_list() == [True, False, True]
    # the most responsible mode takes a row no mode represents: the widest one for a far value
    assert out["amount__component"].to_list()[0] == plan.kept_ranks[np.argmax(plan.kept_stds)]
    stats = K.aggregate_stats(out, K.encode_stats([plan]))
    names = {s.name: stats[str(i)] for i, s in enumerate(K.encode_stats([plan]))}
    assert names["clipped"] == 2


def test_resample_unclipped_is_the_choice_rule_over_the_modes_that_fit():
    rng = np.random.default_rng(6)
    w, m, s = np.array([0.2, 0.5, 0.3]), np.array([0.0, 3.0, 8.0]), np.array([1.0, 2.0, 1.5])
    x = rng.uniform(-10, 20, 5000)
    u = rng.random(5000)
    got, represented = K.resample_unclipped(x, u, weights=w, means=m, stds=s)
    for i in range(x.size):
        fits = np.abs(x[i] - m) / (4 * s) <= 0.99
        dens = w / s * np.exp(-0.5 * ((x[i] - m) / s) ** 2)
        assert represented[i] == fits.any()
        if not fits.any():
            assert got[i] == np.argmax(dens)
            continue
        p = np.where(fits, dens, 0.0)
        cdf = np.cumsum(p / p.sum())
        assert fits[got[i]] and got[i] == min(cdf[:-1].searchsorted(u[i], side="right"), np.flatnonzero(fits)[-1])


def test_inverse_restores_integer_types_and_counts_forward_clipped_rows():
    model = gaussian_model("n", [0.6, 0.4], [10.0, 500.0], [3.0, 80.0])
    model = ColumnModel(model.column, model.column_type, model.modes, {**model.settings, "source_type": "bigint"})
    plan = K.plan_column(model)
    rng = np.random.default_rng(1)
    x = np.r_[rng.integers(0, 20, 1000), rng.integers(200, 800, 1000), [10**9]]  # within the modes, and one far
    df = pl.DataFrame({"_row_id": np.arange(x.size), "n": pl.Series(x, dtype=pl.Int64)})
    enc = K.encode(df, [plan], seed=0)
    dec = K.decode(enc, [plan])
    assert dec.schema["n"] == pl.Int64
    clipped = enc[K.flag_name("clipped", "n")].to_numpy()
    assert clipped.sum() == 1 and clipped[-1]
    np.testing.assert_array_equal(dec["n"].to_numpy()[~clipped], x[~clipped])  # exact integers
    # the inverse reports the rows that carry a forward clip (|z| at the 0.99 bound)
    assert dec[K.flag_name("clipped", "n")].to_list() == clipped.tolist()
    assert enc[K.flag_name("error", "n")].to_numpy()[~clipped].max() == 0.0


# --------------------------------------------------------------------------- round trips


def _assert_round_trip(x, back, clipped, width):
    """Every non-clipped row is exact to relative error 1e-12. Relative to |x|, or to the
    mode's width 4 sigma when |x| is smaller (an exact 0 comes back as ~1e-17: a rounding
    of mu cannot be undone; a mixed column's special value 0 is exact)."""
    keep = ~clipped & np.isfinite(x)
    assert keep.mean() > 0.9
    scale = np.maximum(np.abs(x), width)[keep]
    diff = np.abs(back[keep] - x[keep])
    rel = np.divide(diff, scale, out=np.zeros_like(diff), where=diff > 0)  # 0/0 (a special value 0) is exact
    assert rel.max() <= 1e-12, f"max relative error {rel.max():.3g}"
    assert np.mean(back[keep] == x[keep]) > 0.5  # most rows are bit-exact


def _width(plan, enc, layout="wide"):
    rank = K._rank_from(enc, plan, layout=layout, clip=False)
    return np.nan_to_num(K.STD_MULTIPLIER * plan.rank_std[rank], nan=0.0)


@pytest.mark.parametrize("layout", ["wide", "onehot"])
def test_round_trip_exact_on_synthetic(layout):
    df = synthetic(50_000)
    plans = _plans()
    enc = K.encode(df, plans, seed=1, layout=layout)
    dec = K.decode(enc.select(list(K.encoded_schema(plans, layout=layout))), plans, layout=layout)
    for plan in plans[:3]:
        c = plan.column
        _assert_round_trip(df[c].to_numpy(), dec[c].to_numpy(), enc[K.flag_name("clipped", c)].to_numpy(),
                           _width(plan, enc, layout))
        missing = ~np.isfinite(df[c].cast(pl.Float64).fill_null(np.nan).to_numpy())
        assert dec[c].is_null().to_numpy().tolist() == missing.tolist()
    known = df["cat"].is_in(["a", "b", "c"]) | df["cat"].is_null()
    assert dec["cat"].filter(known).to_list() == df["cat"].filter(known).to_list()
    assert dec["cat"].filter(~known).to_list() == [None]  # the unseen category comes back unknown (null)


@pytest.mark.parametrize("loader", [datasets.load_diabetes, datasets.load_breast_cancer, datasets.load_wine])
def test_round_trip_exact_on_sklearn_datasets(loader):
    X = loader().data
    models, columns = [], {}
    for j in range(X.shape[1]):
        gm = GaussianMixture(n_components=3, random_state=0).fit(X[:, j : j + 1])
        models.append(gaussian_model(f"f{j}", gm.weights_, gm.means_.ravel(), np.sqrt(gm.covariances_.ravel())))
        columns[f"f{j}"] = X[:, j]
    plans = _plans(models)
    df = pl.DataFrame({"_row_id": np.arange(len(X)), **columns})
    enc = K.encode(df, plans, seed=2)
    dec = K.decode(enc, plans)
    for plan in plans:
        c = plan.column
        _assert_round_trip(columns[c], dec[c].to_numpy(), enc[K.flag_name("clipped", c)].to_numpy(), _width(plan, enc))


def test_kernels_are_row_local():
    df = synthetic(3000)
    plans = _plans()
    whole = K.encode(df, plans, seed=4, layout="onehot")
    parts = pl.concat([K.encode(df[i : i + 700], plans, seed=4, layout="onehot") for i in range(0, 3000, 700)])
    assert whole.equals(parts)
    assert K.to_long(whole, plans, layout="onehot").equals(K.to_long(K.encode(df, plans, seed=4), plans, layout="wide"))


# --------------------------------------------------------------------------- kinds and bad values


def test_mixed_special_values_get_their_own_mode_and_zero():
    plan = K.plan_column(mixed_model())
    df = pl.DataFrame({"_row_id": np.arange(5), "mixed": [0.0, -1.0, 55.0, -0.0, 1e9]})
    out = K.encode(df, [plan], seed=0)
    assert out["mixed__component"].to_list()[:2] == [0, 3] and out["mixed__component"][3] == 0
    assert out["mixed"].to_list()[:2] == [0.0, 0.0]
    assert out["mixed__component"][2] in (1, 2)
    assert out[K.flag_name("clipped", "mixed")].to_list() == [False, False, False, False, True]
    back = K.decode(out, [plan])["mixed"].to_list()
    assert back[:4] == [0.0, -1.0, pytest.approx(55.0, rel=1e-12), 0.0]


def test_mixed_without_kept_gaussians_maps_to_nearest_special_and_counts_it():
    model = ColumnModel("m", "mixed", (Mode("special", 0, 0, True, value_double=0.0), Mode("special", 1, 1, True, value_double=10.0)))
    out = K.encode(pl.DataFrame({"_row_id": [1, 2, 3], "m": [0.0, 7.0, 2.0]}), [K.plan_column(model)], seed=0)
    assert out["m__component"].to_list() == [0, 1, 0]
    assert out[K.flag_name("clipped", "m")].to_list() == [False, True, True]
    assert out[K.flag_name("error", "m")].to_list() == [0.0, 3.0, 2.0]


def test_categorical_ranks_unknown_and_null():
    plan = K.plan_column(category_model())
    df = pl.DataFrame({"_row_id": np.arange(6), "cat": ["b", "a", None, "c", "new", "b"]})
    for layout in K.LAYOUTS:
        out = K.encode(df, [plan], seed=0, layout=layout)
        assert out[K.flag_name("unknown", "cat")].to_list() == [False, False, False, False, True, False]
        assert out[K.flag_name("null", "cat")].to_list() == [False, False, True, False, False, False]
        long = K.to_long(out, [plan], layout=layout)
        assert long["component_rank"].to_list() == [0, 1, 2, 3, 4, 0]  # 4 = the unknown rank
        assert long["is_null"].to_list() == [False, False, True, False, False, False]
        assert K.decode(out, [plan], layout=layout)["cat"].to_list() == ["b", "a", None, "c", None, "b"]
    onehot = K.encode(df, [plan], seed=0, layout="onehot")
    assert onehot["cat__unknown"].to_list() == [0, 0, 0, 0, 1, 0]


def test_categorical_without_null_category_sends_null_to_unknown():
    model = ColumnModel("k", "categorical", (Mode("category", 0, 0, True, value="1"), Mode("category", 1, 1, True, value="2")))
    df = pl.DataFrame({"_row_id": [1, 2, 3], "k": [2, None, 1]})  # integers match their string form
    out = K.encode(df, [K.plan_column(model)], seed=0)
    assert out["k__component"].to_list() == [1, 2, 0]
    assert out[K.flag_name("unknown", "k")].to_list() == [False, True, False]


def test_null_nan_inf_become_the_null_indicator_and_are_counted():
    plans = _plans([amount_model()])
    df = pl.DataFrame({"_row_id": np.arange(5), "amount": [10.0, None, float("nan"), float("inf"), -float("inf")]})
    out = K.encode(df, plans, seed=0, layout="onehot")
    assert out["amount__null"].to_list() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert out.select(K.block_names(plans[0])).sum_horizontal().to_list() == [1.0, 0, 0, 0, 0]
    assert out[K.flag_name("nonfinite", "amount")].to_list() == [False, False, True, True, True]
    figures = K.aggregate_stats(out, K.encode_stats(plans))
    named = {s.name: figures[str(i)] for i, s in enumerate(K.encode_stats(plans))}
    assert named["null_or_nonfinite"] == 4 and named["nonfinite"] == 3 and named["clipped"] == 0
    long = K.to_long(out, plans, layout="onehot")
    assert long["is_null"].to_list() == [False, True, True, True, True]
    assert long["normalized"].null_count() == 4 and long["component_rank"].null_count() == 4


def test_extreme_values_are_clipped_and_the_error_reported():
    plans = _plans([amount_model()])
    out = K.encode(pl.DataFrame({"_row_id": [0, 1], "amount": [1e6, -1e300]}), plans, seed=0)
    assert out["amount"].to_list() == [0.99, -0.99]
    assert out[K.flag_name("clipped", "amount")].to_list() == [True, True]
    rank = out["amount__component"].to_numpy()
    p = plans[0]
    recon = 0.99 * 4 * p.rank_std[rank[0]] + p.rank_mean[rank[0]]
    assert out[K.flag_name("error", "amount")][0] == pytest.approx(1e6 - recon, rel=1e-12)


def test_inverse_clips_as_rdt():
    plan = K.plan_column(amount_model())
    n = plan.n_modes
    wide = pl.DataFrame({
        "_row_id": [0, 1, 2, 3, 4],
        "amount": [1.7, -3.0, 0.5, 0.5, float("nan")],
        "amount__component": [0.0, 1.2, 7.6, -2.0, 0.0],  # generator output: floats, out of range
        "amount__null": [0.0, 0.1, 0.2, 0.0, 0.0],
    })
    out = K.decode(wide, [plan])
    expected = _rdt_reverse(np.array([1.7, -3.0, 0.5, 0.5]), np.array([0.0, 1.2, 7.6, -2.0]), plan.rank_mean, plan.rank_std)
    np.testing.assert_array_equal(out["amount"].to_numpy()[:4], expected)
    assert out["amount"][4] is None
    assert out[K.flag_name("clipped", "amount")].to_list() == [True, True, True, True, False]
    # a softmax block: the argmax is taken
    block = np.full((2, n), 0.1)
    block[0, 2], block[1, 0] = 0.7, 0.5
    onehot = pl.DataFrame({"_row_id": [0, 1], "amount": [0.25, 0.25], **{f"amount__{r}": block[:, r] for r in range(n)},
                           "amount__null": [0.0, 0.9]})
    got = K.decode(onehot, [plan], layout="onehot")["amount"].to_list()
    assert got == [0.25 * 4 * plan.rank_std[2] + plan.rank_mean[2], None]


@pytest.mark.parametrize(
    "modes, message",
    [
        ((Mode("gaussian", 0, 1, True, 1.0, 0.0, 1.0),), "ranks of kept modes must be 0..0"),
        ((Mode("gaussian", 0, 0, True, 1.0, 0.0, 0.0),), "needs weight > 0, std > 0"),
        ((Mode("category", 0, 0, True, value="a"),), "cannot keep a mode of kind 'category'"),
        ((Mode("gaussian", 0, None, False, 1.0, 0.0, 1.0),), "keeps no mode"),
    ],
)
def test_inconsistent_models_are_rejected(modes, message):
    with pytest.raises(ValueError, match=message):
        K.plan_column(ColumnModel("bad", "continuous", modes))


def test_dropped_components_take_part_in_the_posterior_as_in_rdt():
    # RDT: predict_proba over all components, then the valid columns, + 1e-6, renormalised.
    model = amount_model()
    plan = K.plan_column(model)
    assert len(plan.post_weights) == 4 and len(plan.kept_ranks) == 3
    x = np.array([5000.0])  # at the dropped component's mean
    p = K.responsibilities(x, weights=plan.post_weights, means=plan.post_means, stds=plan.post_stds)
    assert p[0, 3] > 0.5  # the dropped mode takes most of the mass; the kept ones share the rest


def test_output_name_collisions_are_refused():
    plans = _plans([gaussian_model("x", [1.0], [0.0], [1.0]), gaussian_model("x__null", [1.0], [0.0], [1.0])])
    with pytest.raises(ValueError, match="'x__null' is produced twice"):
        K.encoded_schema(plans, layout="wide")
