"""HEST benchmark: the protocol against an independent scikit-learn pipeline, and every
way the data can be wrong."""

from __future__ import annotations

import shutil
import warnings

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pathbench.benches import hest as hest_bench
from pathbench.benches.hest import HestWarning, evaluate_hest, hest_cache_embeddings, summarize
from pathbench.benches.hest_protocol import (
    CONSTANT_TARGET,
    RidgeCVHead,
    RidgeHead,
    RidgePCAHead,
    aggregate_folds,
    pearson_per_gene,
)
from pathbench.data.hest import (
    HEST_TASKS,
    HestPatchDataset,
    decode_barcodes,
    download_hest_bench,
    load_task,
)
from pathbench.data.synthetic_hest import make_synthetic_hest
from pathbench.errors import DataError, PathbenchError

TASKS = ("SYN_A", "SYN_B")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # tiny matrices: spinning BLAS threads cost far more than they bring
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return make_synthetic_hest(tmp_path_factory.mktemp("hest") / "bench", seed=3, spots_per_sample=24)


@pytest.fixture
def data_copy(synthetic_root, tmp_path):
    """A private copy of the synthetic dataset that a test may damage."""
    return shutil.copytree(synthetic_root, tmp_path / "bench")


_PIXEL_CACHE: dict = {}


def _pixels(path):
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _PIXEL_CACHE:
        _PIXEL_CACHE[key] = _read_pixels(path)
    return _PIXEL_CACHE[key]


def _read_pixels(path):
    with h5py.File(path, "r") as handle:
        images = handle["img"][()]
        barcodes = decode_barcodes(handle["barcode"][()])
    n = len(images)
    # 7 x 7 grid of mean colours: a simple, fixed image descriptor (147 features)
    small = images.astype(np.float32).reshape(n, 7, 32, 7, 32, 3).mean(axis=(2, 4)).reshape(n, -1) / 255.0
    return barcodes, small


def pixel_features(task, sample):
    return _pixels(sample.patches_path)


def noise_features(task, sample):
    barcodes, small = _pixels(sample.patches_path)
    seed = sum(map(ord, sample.sample_id))
    return barcodes, np.random.default_rng(seed).normal(size=small.shape).astype(np.float32)


def load_tasks(root, names=TASKS):
    return [load_task(root, name) for name in names]


# ---------------------------------------------------------------------------------------
# The independent reference: HEST's benchmark.py / trainer.py steps, written out plainly.


def reference_fold(root, task, fold, features, seed=1, pca=True):
    """Fold score rebuilt with anndata, sklearn's Pipeline and scipy's pearsonr."""
    task_dir = root / task
    genes = pd.read_json(task_dir / "var_50genes.json")["genes"].tolist()
    sides = {}
    for side in ("train", "test"):
        split = pd.read_csv(task_dir / "splits" / f"{side}_{fold}.csv")
        xs, ys = [], []
        for row in split.itertuples():
            barcodes, x = features(task_dir / row.patches_path)
            adata = anndata.read_h5ad(task_dir / row.expr_path)
            adata = adata[barcodes][:, genes]
            xs.append(x)
            ys.append(np.log1p(np.asarray(adata.X, dtype=np.float64)))
        sides[side] = (np.concatenate(xs).astype(np.float32), np.concatenate(ys))
    (x_train, y_train), (x_test, y_test) = sides["train"], sides["test"]
    if pca:
        n_components = min(256, *x_train.shape)
        pipe = Pipeline([("scaler", StandardScaler()), ("PCA", PCA(n_components=n_components, random_state=seed))])
        # HEST's benchmark.py hands the PCA output to its trainer as torch tensors
        x_train, x_test = torch.Tensor(pipe.fit_transform(x_train)), torch.Tensor(pipe.transform(x_test))
    alpha = 100 / (x_train.shape[1] * y_train.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    preds = reg.fit(x_train, y_train).predict(x_test)
    per_gene = [pearsonr(y_test[:, g], preds[:, g])[0] for g in range(y_test.shape[1])]
    return float(np.mean(per_gene)), per_gene, genes


@pytest.mark.parametrize("head", ["ridge-pca", "ridge"])
def test_every_fold_matches_an_independent_sklearn_pipeline(synthetic_root, head):
    result = evaluate_hest(load_tasks(synthetic_root), pixel_features, head=head, seed=1)
    assert len(result.folds) == 5
    for row in result.folds.itertuples():
        mean, per_gene, genes = reference_fold(synthetic_root, row.task, row.fold, _pixels, pca=head == "ridge-pca")
        assert row.pearson_mean == pytest.approx(mean, abs=1e-12)
        assert row.n_genes == 50
        ours = result.genes[(result.genes.task == row.task) & (result.genes.fold == row.fold)]
        assert ours.gene.tolist() == genes
        np.testing.assert_allclose(ours.pearson.to_numpy(), per_gene, atol=1e-12)
    for task in TASKS:
        means = result.folds.loc[result.folds.task == task, "pearson_mean"].to_numpy()
        row = result.summary.set_index("task").loc[task]
        assert row.pearson_mean == pytest.approx(means.mean(), abs=1e-12)
        assert row.pearson_std == pytest.approx(np.sqrt(np.mean((means - means.mean()) ** 2)), abs=1e-12)
    task_means = result.summary.set_index("task").loc[list(TASKS), "pearson_mean"]
    assert result.average == pytest.approx(task_means.mean(), abs=1e-12)


def test_pca_head_with_256_components_matches_the_reference_pipeline():
    rng = np.random.default_rng(5)
    latent = rng.normal(size=(400, 8))
    x = (latent @ rng.normal(size=(8, 272)) + rng.normal(size=(400, 272))).astype(np.float32)
    y = np.log1p(rng.poisson(np.exp(1 + 0.1 * latent @ rng.normal(size=(8, 50)))))
    head = RidgePCAHead(seed=1).fit(x[:300], y[:300])
    assert head.n_components_ == 256 and head.alpha_ == pytest.approx(100 / (256 * 50))
    pipe = Pipeline([("scaler", StandardScaler()), ("PCA", PCA(n_components=256, random_state=1))])
    z_train = torch.Tensor(pipe.fit_transform(x[:300]))
    reg = Ridge(solver="lsqr", alpha=100 / (256 * 50), random_state=1, fit_intercept=False, max_iter=1000)
    reference = reg.fit(z_train, y[:300]).predict(torch.Tensor(pipe.transform(x[300:])))
    np.testing.assert_allclose(head.predict(x[300:]), reference, rtol=0, atol=1e-12)


def test_ridge_runs_in_float64_on_float32_pca_output_as_hest_trainer_does():
    # HEST-like task: low-rank 512-d embeddings with a shift per sample (slide), Poisson counts.
    rng = np.random.default_rng(11)
    n_per_sample, n_samples = 150, 4
    latent = rng.normal(size=(n_per_sample * n_samples, 12))
    sample = np.repeat(np.arange(n_samples), n_per_sample)
    shifts = rng.normal(scale=3.0, size=(n_samples, 512))
    x = (latent @ rng.normal(size=(12, 512)) + shifts[sample] + 0.3 * rng.normal(size=(len(sample), 512)))
    x = x.astype(np.float32)
    y = np.log1p(rng.poisson(np.exp(0.5 + 0.3 * latent @ rng.normal(size=(12, 50)))))
    train, test = sample < 3, sample == 3

    # HEST: Pipeline -> torch.Tensor -> trainer.train_test_reg's Ridge, which reads float64
    pipe = Pipeline([("scaler", StandardScaler()), ("PCA", PCA(n_components=256, random_state=1))])
    x_train, x_test = torch.Tensor(pipe.fit_transform(x[train])), torch.Tensor(pipe.transform(x[test]))
    reg = Ridge(solver="lsqr", alpha=100 / (x_train.shape[1] * y.shape[1]), random_state=1, fit_intercept=False,
                max_iter=1000).fit(x_train, y[train])
    assert reg.coef_.dtype == np.float64
    hest_r = pearson_per_gene(y[test], reg.predict(x_test)).r

    ours = pearson_per_gene(y[test], RidgePCAHead(seed=1).fit(x[train], y[train]).predict(x[test])).r
    np.testing.assert_allclose(ours, hest_r, rtol=0, atol=1e-12)
    # a float32 ridge on the same inputs is measurably off, so the check above can tell them apart
    reg32 = Ridge(solver="lsqr", alpha=reg.alpha, random_state=1, fit_intercept=False, max_iter=1000)
    r32 = pearson_per_gene(y[test], reg32.fit(x_train.numpy(), y[train]).predict(x_test.numpy())).r
    assert np.max(np.abs(r32 - hest_r)) > 1e-5


def test_raw_ridge_head_uses_the_embedding_dimension_in_alpha():
    rng = np.random.default_rng(0)
    head = RidgeHead().fit(rng.normal(size=(40, 30)), rng.normal(size=(40, 5)))
    assert head.alpha_ == pytest.approx(100 / (30 * 5)) and head.n_components_ is None


def test_ridge_cv_picks_the_best_inner_alpha_and_refits_on_all_training_spots():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 20)).astype(np.float32)
    y = x[:, :3] @ rng.normal(size=(3, 4)) + 0.5 * rng.normal(size=(90, 4))
    groups = np.repeat(np.arange(3), 30)
    head = RidgeCVHead(alphas=(1e-2, 1.0, 1e6), seed=1).fit(x, y, groups=groups)
    assert set(head.cv_scores_) == {1e-2, 1.0, 1e6}
    assert head.alpha_ == max(head.cv_scores_, key=head.cv_scores_.get)
    assert head.alpha_ != 1e6   # a penalty that kills the signal never wins
    reference = RidgePCAHead(alpha=head.alpha_, seed=1).fit(x, y)
    np.testing.assert_allclose(head.predict(x), reference.predict(x), atol=1e-6)


def test_ridge_cv_runs_end_to_end(synthetic_root):
    result = evaluate_hest(load_tasks(synthetic_root, ("SYN_B",)), pixel_features, head="ridge-cv")
    assert result.folds.alpha.notna().all() and np.isfinite(result.average)


def test_a_better_extractor_scores_higher(synthetic_root):
    tasks = load_tasks(synthetic_root)
    informative = evaluate_hest(tasks, pixel_features).average
    uninformative = evaluate_hest(tasks, noise_features).average
    assert informative > 0.2 and uninformative < 0.1


def test_each_sample_is_embedded_once_whatever_the_number_of_folds(synthetic_root):
    calls = []

    def counting(task, sample):
        calls.append(sample.sample_id)
        return pixel_features(task, sample)

    evaluate_hest(load_tasks(synthetic_root), counting)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 7


# ---------------------------------------------------------------------------------------
# Pearson r and aggregation against slow references


def slow_pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((a[i] - ma) * (b[i] - mb) for i in range(n))
    va = sum((a[i] - ma) ** 2 for i in range(n))
    vb = sum((b[i] - mb) ** 2 for i in range(n))
    return cov / (va * vb) ** 0.5


def test_pearson_per_gene_matches_a_slow_reference_with_ties_and_constant_columns():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 4, size=(30, 6)).astype(float)      # many ties
    preds = truth + rng.normal(size=(30, 6))
    preds[:, 1] = np.round(preds[:, 1])
    truth[:, 3] = 2.0                                          # constant target
    preds[:, 4] = 0.7                                          # constant prediction
    result = pearson_per_gene(truth, preds)
    for g in (0, 1, 2, 5):
        assert result.r[g] == pytest.approx(slow_pearson(list(truth[:, g]), list(preds[:, g])), abs=1e-12)
    assert np.isnan(result.r[3]) and np.isnan(result.r[4])
    assert result.excluded[3] == CONSTANT_TARGET and result.excluded[4]
    assert result.n_valid == 4
    assert result.mean == pytest.approx(np.mean(result.r[[0, 1, 2, 5]]), abs=1e-12)


def test_fold_aggregation_is_mean_and_population_std():
    assert aggregate_folds([0.2, 0.4, 0.9]) == pytest.approx((0.5, np.sqrt(((0.3**2) + 0.1**2 + 0.4**2) / 3)))
    folds = pd.DataFrame({"task": ["A", "A", "B"], "fold": [0, 1, 0], "pearson_mean": [0.2, 0.4, 0.9]})
    summary = summarize(folds).set_index("task")
    assert summary.loc["A", "pearson_std"] == pytest.approx(0.1)
    assert summary.loc["average", "pearson_mean"] == pytest.approx((0.3 + 0.9) / 2)
    assert summary.loc["average", "n_folds"] == 3


# ---------------------------------------------------------------------------------------
# Alignment and broken data


def _rewrite_patches(path, order):
    with h5py.File(path, "r") as handle:
        data = {key: handle[key][()] for key in handle}
    with h5py.File(path, "w") as handle:
        for key, value in data.items():
            handle.create_dataset(key, data=value[order])


def test_patches_in_shuffled_order_still_align_with_the_expression(synthetic_root, data_copy):
    before = evaluate_hest(load_tasks(synthetic_root), pixel_features)
    for i, path in enumerate(sorted(data_copy.glob("*/patches/*.h5"))):
        _rewrite_patches(path, np.random.default_rng(i).permutation(24))
    after = evaluate_hest(load_tasks(data_copy), pixel_features)
    for row in after.folds.itertuples():
        mean, _, _ = reference_fold(data_copy, row.task, row.fold, _pixels)
        assert row.pearson_mean == pytest.approx(mean, abs=1e-12)
    # the same spots with the same targets: only rounding (the PCA output is float32, and
    # lsqr's stopping rule amplifies it) differs; a misalignment would change the scores completely
    np.testing.assert_allclose(after.folds.pearson_mean, before.folds.pearson_mean, atol=2e-3)


def test_expression_in_shuffled_order_gives_identical_results(synthetic_root, data_copy):
    before = evaluate_hest(load_tasks(synthetic_root), pixel_features)
    for i, path in enumerate(sorted(data_copy.glob("*/adata/*.h5ad"))):
        adata = anndata.read_h5ad(path)
        adata[np.random.default_rng(i).permutation(adata.n_obs)].copy().write_h5ad(path)
    after = evaluate_hest(load_tasks(data_copy), pixel_features)
    np.testing.assert_array_equal(after.folds.pearson_mean, before.folds.pearson_mean)


def test_a_missing_h5ad_is_a_clear_error_naming_the_sample(data_copy):
    (data_copy / "SYN_A" / "adata" / "SYN_A_S1.h5ad").unlink()
    with pytest.raises(DataError, match=r"SYN_A_S1.*missing"):
        evaluate_hest(load_tasks(data_copy, ("SYN_A",)), pixel_features)


def test_a_barcode_absent_from_the_h5ad_is_a_clear_error_naming_the_sample(data_copy):
    path = data_copy / "SYN_B" / "adata" / "SYN_B_S2.h5ad"
    adata = anndata.read_h5ad(path)
    with h5py.File(data_copy / "SYN_B" / "patches" / "SYN_B_S2.h5", "r") as handle:
        lost = decode_barcodes(handle["barcode"][()])[5]
    adata[adata.obs_names != lost].copy().write_h5ad(path)
    with pytest.raises(DataError, match=rf"sample SYN_B_S2: 1 of 24 patch barcodes are absent.*{lost}"):
        evaluate_hest(load_tasks(data_copy, ("SYN_B",)), pixel_features)


@pytest.mark.parametrize("content", ["", "sample_id,patches_path,expr_path\n"])
def test_an_empty_split_file_is_a_clear_error(data_copy, content):
    (data_copy / "SYN_A" / "splits" / "test_1.csv").write_text(content)
    with pytest.raises(DataError, match=r"test_1\.csv.*(empty|no samples)"):
        load_task(data_copy, "SYN_A")


def test_unpaired_split_files_are_refused(data_copy):
    (data_copy / "SYN_B" / "splits" / "test_1.csv").unlink()
    with pytest.raises(DataError, match="not paired"):
        load_task(data_copy, "SYN_B")


def test_a_gene_constant_in_a_test_fold_is_reported_and_excluded(data_copy):
    path = data_copy / "SYN_A" / "adata" / "SYN_A_S2.h5ad"     # the test sample of fold 2 only
    genes = pd.read_json(data_copy / "SYN_A" / "var_50genes.json")["genes"].tolist()
    adata = anndata.read_h5ad(path)
    adata.X[:, list(adata.var_names).index(genes[7])] = 3.0
    adata.write_h5ad(path)
    with pytest.warns(HestWarning, match=rf"fold 2: gene {genes[7]} excluded"):
        result = evaluate_hest(load_tasks(data_copy, ("SYN_A",)), pixel_features)
    fold2 = result.folds.set_index("fold").loc[2]
    assert fold2.n_genes == 49 and fold2.n_excluded_genes == 1 and np.isfinite(fold2.pearson_mean)
    rows = result.genes[result.genes.fold == 2].set_index("gene")
    assert np.isnan(rows.loc[genes[7], "pearson"]) and rows.loc[genes[7], "excluded"] == CONSTANT_TARGET
    assert fold2.pearson_mean == pytest.approx(rows.pearson.dropna().mean(), abs=1e-12)
    assert result.folds.set_index("fold").loc[0].n_genes == 50
    assert any(genes[7] in note for note in result.notes)


# ---------------------------------------------------------------------------------------
# Readers


def test_patch_dataset_reads_tiles_and_barcodes_of_either_shape(synthetic_root, tmp_path):
    source = synthetic_root / "SYN_A" / "patches" / "SYN_A_S0.h5"
    dataset = HestPatchDataset(source)
    with h5py.File(source, "r") as handle:
        images, barcodes = handle["img"][()], handle["barcode"][()]
    assert dataset.item_ids == [b.decode() for b in barcodes] and len(dataset) == 24
    assert dataset[3].shape == (224, 224, 3) and dataset[3].dtype == np.uint8
    np.testing.assert_array_equal(dataset[3], images[3])
    # HEST's own writer stores 1-D datasets as (N, 1); the copy elsewhere keeps its fingerprint
    copy = tmp_path / "elsewhere.h5"
    with h5py.File(source, "r") as src, h5py.File(copy, "w") as dst:
        dst.create_dataset("img", data=src["img"][()])
        dst.create_dataset("barcode", data=src["barcode"][()].reshape(-1, 1))
        dst.create_dataset("coords", data=src["coords"][()])
    assert HestPatchDataset(copy).item_ids == dataset.item_ids
    assert HestPatchDataset(copy).fingerprint == dataset.fingerprint
    with h5py.File(copy, "a") as dst:
        dst["img"][0] = 255 - dst["img"][0]
    assert HestPatchDataset(copy).fingerprint != dataset.fingerprint


def _write_hest_embedding_cache(directory, root, model):
    """Write pixel features in HEST's own embedding format: (N, 1) byte barcodes, as its save_hdf5 does."""
    for path in root.glob("*/patches/*.h5"):
        barcodes, features = _pixels(path)
        target = directory / path.parent.parent.name / model / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(target, "w") as handle:
            handle.create_dataset("embeddings", data=features)
            handle.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes]).reshape(-1, 1))
            handle.create_dataset("coords", data=np.zeros((len(barcodes), 2), dtype=np.int64))


def test_hest_embedding_cache_gives_the_same_numbers(synthetic_root, tmp_path):
    _write_hest_embedding_cache(tmp_path / "emb", synthetic_root, "my_model")
    direct = evaluate_hest(load_tasks(synthetic_root), pixel_features)
    cached = evaluate_hest(load_tasks(synthetic_root), hest_cache_embeddings(tmp_path / "emb", "my_model"))
    np.testing.assert_array_equal(cached.folds.pearson_mean, direct.folds.pearson_mean)
    with pytest.raises(DataError, match="no embeddings for sample"):
        evaluate_hest(load_tasks(synthetic_root), hest_cache_embeddings(tmp_path / "emb", "other"))


def test_cli_evaluates_hest_embedding_files(synthetic_root, tmp_path, capsys):
    from pathbench.cli import main

    _write_hest_embedding_cache(tmp_path / "emb", synthetic_root, "my_model")
    out = tmp_path / "out"
    code = main(["evaluate", "--bench", "hest", "--data", str(synthetic_root), "--embeddings-dir",
                 str(tmp_path / "emb"), "--model-name", "my_model", "--out", str(out)])
    assert code == 0
    direct = evaluate_hest(load_tasks(synthetic_root), pixel_features)
    folds = pd.read_csv(out / "folds.csv")
    np.testing.assert_allclose(folds.pearson_mean, direct.folds.pearson_mean, atol=1e-12)
    assert "my_model" in capsys.readouterr().out


def test_hub_download_asks_only_for_the_requested_tasks(monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(**kwargs):
        seen.update(kwargs)
        for task in ("IDC", "LYMPH_IDC"):
            (tmp_path / task / "splits").mkdir(parents=True, exist_ok=True)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download_hest_bench(["IDC", "LYMPH_IDC"]) == tmp_path
    assert seen["repo_id"] == "MahmoodLab/hest-bench" and seen["repo_type"] == "dataset"
    assert seen["allow_patterns"] == ["IDC/*", "LYMPH_IDC/*"]
    assert len(HEST_TASKS) == 9
    download_hest_bench(["IDC"], include_patches=False)     # precomputed embeddings: no patch files
    assert seen["allow_patterns"] == ["IDC/splits/*", "IDC/adata/*", "IDC/var_50genes.json"]
    with pytest.raises(DataError, match="PAAD not found in .*HF_HUB_OFFLINE"):
        download_hest_bench(["PAAD"])


def test_gated_or_offline_hub_errors_say_what_to_do(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    gated = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(gated, "401 gated")
    for error, words in ((gated, "no access"), (LocalEntryNotFoundError("offline"), "offline")):
        def fail(error=error, **kwargs):
            raise error

        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
        with pytest.raises(DataError, match=words) as info:
            download_hest_bench(["IDC"])
        assert "huggingface.co/datasets/MahmoodLab/hest-bench" in str(info.value)
        assert "huggingface-cli login" in str(info.value)


def test_unknown_head_and_task_are_clear_errors(synthetic_root):
    with pytest.raises(PathbenchError, match="unknown HEST head"):
        evaluate_hest(load_tasks(synthetic_root, ("SYN_A",)), pixel_features, head="lasso")
    with pytest.raises(DataError, match="SYN_Z.*not found.*SYN_A"):
        load_task(synthetic_root, "SYN_Z")


# ---------------------------------------------------------------------------------------
# End to end with a real (random-weight) extractor


def test_evaluate_with_a_model_on_synthetic_data_writes_every_output(tmp_path, capsys):
    from pathbench.cli import main
    from pathbench.features import cache_root

    out = tmp_path / "out"
    common = ["evaluate", "--model", "vit-tiny-random", "--bench", "hest", "--data", "synthetic",
              "--tasks", "SYN_A", "--no-progress", "--device", "cpu"]
    argv = common + ["--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", HestWarning)
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Model" in printed and "vit-tiny-random" in printed and "Average" in printed

    folds = pd.read_csv(out / "folds.csv")
    assert list(folds.columns[:6]) == ["task", "fold", "pearson_mean", "n_genes", "n_train_spots", "n_test_spots"]
    assert len(folds) == 3 and (folds.n_genes == 50).all() and (folds.n_test_spots == 48).all()
    genes = pd.read_csv(out / "genes.csv")
    assert list(genes.columns[:4]) == ["task", "fold", "gene", "pearson"] and len(genes) == 150
    samples = pd.read_csv(out / "samples.csv")
    assert list(samples.columns) == ["task", "fold", "sample_id", "pearson_mean", "n_genes", "n_spots"]
    assert len(samples) == 3 and samples.pearson_mean.notna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary.task.tolist() == ["SYN_A", "average"]
    assert list(summary.columns) == ["task", "pearson_mean", "pearson_std", "n_folds"]
    run = pd.read_json(out / "run.json", typ="series")
    assert run["pooling"] == "cls+mean" and run["head"] == "ridge-pca" and run["seed"] == 1
    assert run["model"]["name"] == "vit-tiny-random"
    assert run["data"]["source"] == "synthetic" and run["data_fingerprint"].startswith("hest-splits:")

    # the numbers are HEST's pipeline applied to the cached embeddings
    from pathbench.extractors import load_extractor
    from pathbench.features import extract_features

    extractor = load_extractor("vit-tiny-random", device="cpu")
    root = hest_bench.synthetic_root(None)

    def cached(path):
        dataset = HestPatchDataset(path)
        features = extract_features(extractor, dataset, pooling="cls+mean", progress=False)
        return features.item_ids, np.asarray(features.array)

    for row in folds.itertuples():
        mean, _, _ = reference_fold(root, row.task, row.fold, cached)
        assert row.pearson_mean == pytest.approx(mean, abs=1e-6)

    # a second head reuses the cached embeddings: one cache entry per sample, not per run
    assert main(common + ["--head", "ridge", "--out", str(tmp_path / "ridge")]) == 0
    entries = [p for p in (cache_root() / "features").glob("*/*") if (p / "manifest.json").is_file()]
    assert len(entries) == 3


def test_data_resolution_for_local_folders_and_synthetic_tasks(synthetic_root, tmp_path):
    from pathbench.benches.hest import parse_tasks, resolve_data

    assert parse_tasks(" idc, lymph_idc ,") == ["IDC", "LYMPH_IDC"] and parse_tasks("") is None
    # a local folder without leaderboard tasks: every task folder found there
    assert resolve_data(str(synthetic_root), None, None) == (synthetic_root, ["SYN_A", "SYN_B"])
    assert resolve_data(str(synthetic_root), ["SYN_B"], None)[1] == ["SYN_B"]
    with pytest.raises(DataError, match="no such folder"):
        resolve_data(str(tmp_path / "nowhere"), None, None)
    with pytest.raises(DataError, match="synthetic HEST has no task IDC"):
        resolve_data("synthetic", ["IDC"], tmp_path)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_sparse_counts_and_repeated_other_genes_read_the_same(synthetic_root, data_copy):
    import scipy.sparse

    before = evaluate_hest(load_tasks(synthetic_root, ("SYN_B",)), pixel_features)
    for path in data_copy.glob("SYN_B/adata/*.h5ad"):
        adata = anndata.read_h5ad(path)
        names = list(adata.var_names)
        names[-1] = names[-2]                      # a signal-free gene repeated, as gene symbols can be
        adata.var_names = names
        adata.X = scipy.sparse.csr_matrix(adata.X)
        adata.write_h5ad(path)
    after = evaluate_hest(load_tasks(data_copy, ("SYN_B",)), pixel_features)
    np.testing.assert_array_equal(after.folds.pearson_mean, before.folds.pearson_mean)


def test_per_sample_scores_use_each_test_sample_alone(synthetic_root):
    tasks = load_tasks(synthetic_root, ("SYN_B",))
    result = evaluate_hest(tasks, pixel_features)
    assert len(result.samples) == 4 and (result.samples.n_spots == 24).all()
    head = RidgePCAHead(seed=1)
    fold = tasks[0].folds[1]
    x_train, y_train = [], []
    for sample_id in fold.train:
        barcodes, x = pixel_features(None, tasks[0].samples[sample_id])
        adata = anndata.read_h5ad(tasks[0].samples[sample_id].expr_path)[barcodes][:, tasks[0].genes]
        x_train.append(x)
        y_train.append(np.log1p(np.asarray(adata.X, dtype=np.float64)))
    head.fit(np.concatenate(x_train), np.concatenate(y_train))
    sample_id = fold.test[1]
    barcodes, x = pixel_features(None, tasks[0].samples[sample_id])
    adata = anndata.read_h5ad(tasks[0].samples[sample_id].expr_path)[barcodes][:, tasks[0].genes]
    truth, preds = np.log1p(np.asarray(adata.X, dtype=np.float64)), head.predict(x)
    expected = np.mean([pearsonr(truth[:, g], preds[:, g])[0] for g in range(50) if truth[:, g].std() > 0])
    row = result.samples.set_index("sample_id").loc[sample_id]
    assert row.fold == 1 and row.pearson_mean == pytest.approx(expected, abs=1e-6)


def test_a_bad_sample_is_reported_before_the_model_runs(data_copy, monkeypatch, capsys):
    from pathbench import runner
    from pathbench.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the data is checked")

    monkeypatch.setattr(runner, "load_run_extractor", no_model)
    next(data_copy.glob("SYN_A/adata/*.h5ad")).unlink()
    code = main(["evaluate", "--bench", "hest", "--model", "vit-tiny-random", "--data", str(data_copy), "--tasks",
                 "SYN_A", "--no-progress"])
    assert code == 2 and "h5ad" in capsys.readouterr().err
