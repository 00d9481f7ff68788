"""Metric helpers of experiments/validation/response.py against known values (no model)."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest

SCRIPT = (
    pathlib.Path(__file__).resolve().parents[2]
    / "experiments"
    / "validation"
    / "response.py"
)


@pytest.fixture(scope="module")
def response():
    spec = importlib.util.spec_from_file_location("response_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(20, 3, 3))
    predicted = reference + 0.3 * rng.normal(size=reference.shape)
    return predicted, reference


def test_perfect_prediction(response, data):
    _, reference = data
    assert response.mae(reference, reference) == 0.0
    assert response.rmse(reference, reference) == 0.0
    assert response.r2(reference, reference) == 1.0
    assert response.pearson(reference, reference) == pytest.approx(1.0, abs=1e-14)


def test_mean_prediction_has_zero_r2(response, data):
    _, reference = data
    centred = reference - reference.mean()
    assert response.r2(np.zeros_like(centred), centred) == pytest.approx(0.0, abs=1e-14)
    assert response.r2(np.full_like(reference, reference.mean()), reference) == (
        pytest.approx(0.0, abs=1e-14)
    )


def test_errors_of_a_constant_offset(response, data):
    _, reference = data
    assert response.mae(reference + 0.5, reference) == pytest.approx(0.5)
    assert response.rmse(reference - 0.5, reference) == pytest.approx(0.5)
    assert response.rmse([3.0, 0.0], [0.0, 4.0]) == pytest.approx(math.sqrt(12.5))


def test_r2_and_pearson_match_numpy(response, data):
    predicted, reference = data
    x, y = predicted.ravel(), reference.ravel()
    expected_r2 = 1.0 - np.sum((y - x) ** 2) / np.sum((y - y.mean()) ** 2)
    assert response.r2(predicted, reference) == pytest.approx(expected_r2, rel=1e-12)
    assert response.pearson(predicted, reference) == pytest.approx(
        np.corrcoef(x, y)[0, 1], rel=1e-12
    )
    # r is symmetric and invariant to a positive scale and a shift; R^2 is not
    assert response.pearson(reference, predicted) == pytest.approx(
        response.pearson(predicted, reference), rel=1e-12
    )
    assert response.pearson(2.0 * predicted + 1.0, reference) == pytest.approx(
        response.pearson(predicted, reference), rel=1e-12
    )
    assert response.pearson(-predicted, reference) == pytest.approx(
        -response.pearson(predicted, reference), rel=1e-12
    )


def test_undefined_cases_are_nan(response):
    assert math.isnan(response.pearson(np.ones(5), np.arange(5.0)))
    assert math.isnan(response.r2(np.arange(5.0), np.ones(5)))


def test_polarizability_metrics_of_an_isotropic_prediction(response):
    rng = np.random.default_rng(3)
    reference = 40.0 * np.eye(3) + rng.normal(size=(30, 3, 3))
    isotropic = np.trace(reference, axis1=1, axis2=2) / 3.0
    predicted = 0.5 * isotropic[:, None, None] * np.eye(3)  # scaled, isotropic
    metrics = response.polarizability_metrics(predicted, reference)
    assert metrics["num_frames"] == 30
    assert metrics["r_isotropic"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(metrics["r_anisotropic"])
    assert metrics["mean_isotropic_predicted"] == pytest.approx(
        0.5 * metrics["mean_isotropic_reference"]
    )
    perfect = response.polarizability_metrics(reference, reference)
    assert perfect["r_components"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["r_anisotropic"] == pytest.approx(1.0, abs=1e-12)


def test_bec_metrics_pool_atoms_and_split_elements(response):
    reference = [np.zeros((3, 3, 3)), np.zeros((2, 3, 3))]
    numbers = [np.array([8, 1, 1]), np.array([8, 1])]
    predicted = [np.zeros((3, 3, 3)), np.zeros((2, 3, 3))]
    predicted[0][0] = 0.3  # one O atom off by 0.3 in all 9 components
    metrics = response.bec_metrics(predicted, reference, numbers)
    assert metrics["num_frames"] == 2
    assert metrics["num_atoms"] == 5
    assert metrics["all"]["mae"] == pytest.approx(0.3 / 5)
    assert metrics["diagonal"]["rmse"] == pytest.approx(0.3 / math.sqrt(5))
    assert metrics["rmse_by_element"]["H"] == 0.0
    assert metrics["rmse_by_element"]["O"] == pytest.approx(0.3 / math.sqrt(2))


def test_strided_indices(response):
    assert response.strided_indices(10, None).tolist() == list(range(10))
    assert response.strided_indices(10, 20).tolist() == list(range(10))
    picks = response.strided_indices(1000, 100)
    assert len(picks) == 100 and picks[0] == 0 and picks[-1] == 999
    assert np.all(np.diff(picks) > 0)
