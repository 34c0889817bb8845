"""Execute notebook 05 (hardware profiles) headless with small parameters, then probe its live kernel."""

from __future__ import annotations

import pytest

from tests.test_notebooks import run_notebook

PARAMS = (
    "MODEL = 'digits_cnn'\nPROFILES = ('cpu_measured', 'nvidia_t4', 'bitfusion')\nBATCH_SIZE = 16\n"
    "REPEATS = 2\nBUDGET = 3\nFRONT_BUDGET = 3\nTRACK = True\n"
)

PROBE = """
import math
import numpy as np
n_plans, n_profiles = len(plans), len(PROFILES)
assert n_plans == 7, list(plans)
assert len(estimates) == n_plans * n_profiles and len(table) == n_plans * n_profiles, table
assert set(table['profile']) == set(PROFILES) and (table['batch_size'] == BATCH_SIZE).all(), table
assert list(throughput.index) == list(PROFILES), throughput
assert len(profile_fig.data) == n_profiles and profile_fig.layout.yaxis.type == 'log'
lat = table.pivot(index='plan', columns='profile', values='latency_ms')
# reference GPU: int8 tensor cores beat fp32 CUDA cores by far
assert lat.loc['w8a8', 'nvidia_t4'] < lat.loc['fp32', 'nvidia_t4'] / 2, lat
# bit-serial: a (w, a)-bit MAC costs ceil(w/2) * ceil(a/2) int2 bricks (w8a8 16, w4a8 8, w4a4 4, w2a8 4)
bf = lat['bitfusion']
assert bf['w4a4'] < bf['w4a8'] < bf['w8a8'] and bf['w2a8'] < bf['w4a8'], bf
est = CostEstimator(task.model, task.example_input(), 'bitfusion', batch_size=BATCH_SIZE)
compute = {k: est(plans[k]).layers.set_index('node') for k in ('w8a8', 'w4a8', 'w4a4', 'w2a8')}
layer_rows = compute['w8a8'].index[compute['w8a8']['kind'] == 'layer']
c = {k: compute[k].loc[layer_rows, 'compute_ms'].to_numpy() for k in compute}
assert np.allclose(c['w8a8'], 2 * c['w4a8']) and np.allclose(c['w8a8'], 4 * c['w4a4']), c
assert np.allclose(c['w4a4'], c['w2a8']), c
acc = accuracy.set_index('plan')['accuracy']
assert acc['fp32'] == fp32_accuracy >= 0.97 and acc['w8a8'] >= fp32_accuracy - 0.02, acc
assert table.set_index(['plan', 'profile']).loc[('w4a4', 'nvidia_t4'), 'accuracy'] == acc['w4a4']
assert len(latency_fig.data) == 2 * n_profiles
assert math.isclose(sum(float(np.sum(t.y)) for t in breakdown_fig.data), breakdown.latency_ms, rel_tol=1e-9)
# deployment on this CPU
assert res.speedup > 0 and math.isclose(res.speedup, res.fp32_latency_ms / res.deployed_latency_ms)
assert len(res.fp32.times_ms) == len(res.deployed.times_ms) == REPEATS
assert res.accuracy >= res.fp32_accuracy - 0.02, (res.accuracy, res.fp32_accuracy)
assert res.precision_counts == {'int8': 4}, res.precision_counts
assert list(res.layers['precision']) == ['int8'] * 4, res.layers
assert math.isclose(res.estimated_latency_ms, lat.loc['w8a8', 'cpu_measured'], rel_tol=1e-6)
assert list(deploy_fig.data[1].y) == list(res.deployed.times_ms)
# the search estimated latency on SEARCH_PROFILE
assert search.info['latency_source'] == 'profile:bitfusion', search.info
assert search.real_evaluations == BUDGET and (search.trials['latency_ms'] > 0).all(), search.trials
row = search.trials.iloc[0]
assert math.isclose(row['latency_ms'], est(QuantPlan.from_json(row['plan'])).latency_per_sample_ms, rel_tol=1e-9)
assert len(search.front) >= 1 and len(search_fig.data) == 2
# the in-context latency search, deployed beside the uniform plans
assert latency_search.info['latency_source'] == 'in_context', latency_search.info
ft = front.table
assert list(ft['plan'][:3]) == ['uniform fp32', 'uniform bf16', 'uniform int8'] and len(ft) == 3 + len(searched)
assert (ft['measured_ms'] > 0).all() and ft['metric'].between(0, 1).all(), ft
assert ft.loc[ft['kind'] == 'searched', 'estimated_ms'].ge(0).all(), ft  # estimated (timings: never asserted)
assert abs(ft.loc[0, 'metric'] - fp32_accuracy) <= 0.005  # uniform fp32 deployed: the FP32 model (BN folded)
assert list(front.verdicts['uniform']) == list(ft['plan'][:3]) and len(front_fig.data) == 4
# MLflow
from workbench import tracking
runs = tracking.runs_frame(stage='hardware')
assert run_id in set(tracking.runs_frame()['run_id']) and run_id in set(runs['run_id']), runs
logged = runs.set_index('run_id').loc[run_id]
assert math.isclose(logged['metrics.deploy.speedup'], res.speedup), logged
assert logged['metrics.front.uniform_covered'] == front.verdicts['covered'].sum(), logged
assert len(tracking.runs_frame(stage='search')) == 2  # the profile search and the in-context one
assert tracking.runs_frame(stage='deploy')['tags.mlflow.runName'].tolist() == [f'deploy-{MODEL}']  # measure_deployment's
"""


@pytest.mark.slow
def test_05_hardware_profile_eval(tmp_path, monkeypatch):
    run_notebook("05_hardware_profile_eval.ipynb", PARAMS, PROBE, tmp_path, monkeypatch)
