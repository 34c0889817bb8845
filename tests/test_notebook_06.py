"""Execute notebook 06 (runtime adaptation) headless with small parameters, then probe its live kernel."""

from __future__ import annotations

import pytest

from tests.test_notebooks import run_notebook

PARAMS = (
    "MODEL = 'digits_cnn'\nBUDGETS = (0.45, 0.6)\nPOLICIES = ('rule', 'cascade')\nSHIFTS = ('clean', 'noise')\n"
    "PROBE_SAMPLES = 32\nTRACK = True\n"
)

PROBE = """
import math
import numpy as np
import torch
table = ev.table
dyn = table[table['policy'].isin(POLICIES)]
assert len(dyn) == 2 * 2 * 2, table
assert set(table['policy']) <= set(POLICIES) | {'oracle'}, table
assert set(zip(dyn['data'], dyn['budget_fraction'], dyn['policy'])) == {
    (d, b, p) for d in SHIFTS for b in BUDGETS for p in POLICIES}
feasible = dyn[np.isfinite(dyn['accuracy'].to_numpy(float))]
assert len(feasible) == len(dyn), dyn  # both budgets are above the probe rung on digits_cnn
assert (feasible['avg_cost'] <= feasible['budget'] * 1.001).all(), feasible[['avg_cost', 'budget']]
assert (feasible['accuracy'] >= 0.9).all() and (feasible['static_accuracy'] >= 0.9).all(), feasible
assert (feasible['static_cost'] <= feasible['avg_cost'] * (1 + 1e-9)).all(), feasible
# the ladder goes from all-2-bit to all-8-bit, one group one step at a time
assert ev.info['ladder'][0] == 'conv1:2 conv2:2 fc1:2 fc2:2' and ev.info['ladder'][-1] == 'conv1:8 conv2:8 fc1:8 fc2:8'
assert len(ladder) == len(ev.info['ladder']) and ladder['cost_fraction'].is_monotonic_increasing, ladder
assert math.isclose(ladder['cost_fraction'].iloc[-1], 1.0) and math.isclose(ladder['cost_fraction'].iloc[0], 0.25)
assert set(ev.probe.table['group']) == {'conv1', 'conv2', 'fc1', 'fc2'}
# figures: a trace per policy (and the oracle row when the table has one) plus the static points
n_pol = len(set(table.loc[table['data'] == 'clean', 'policy']))
assert len(clean_fig.data) == n_pol + 1 and len(shift_fig.data) == n_pol + 1
assert shifted == 'noise' and 'noise' in shift_fig.layout.title.text
assert clean_fig.layout.yaxis.title.text == 'accuracy (%)' and 'BOPs' in clean_fig.layout.xaxis.title.text
assert len(front_fig.data) == 2 + n_pol
# the live budget slider: more budget buys more BOPs
explorer.policy.value = 'rule'
explorer.slider.value = 0.4
low = dict(explorer.values)
explorer.slider.value = 0.9
high = dict(explorer.values)
assert high['avg_bops'] > 1.5 * low['avg_bops'] and high['avg_weight_bits'] > low['avg_weight_bits'], (low, high)
assert high['avg_bops'] <= 0.9 * explorer.top_cost * 1.001, high
assert high['accuracy'] >= low['accuracy'] - 0.005, (low, high)
# per-input view
assert served.rung.min() >= 0 and len(served.rung) == len(x_test)
assert int(np.sum(hist_fig.data[0].y)) == len(x_test)
assert len(per_input_fig.data) == 24
# bad inputs: the NaN input is rejected, the others served
assert set(res.errors) == {bad}, res.errors
assert res.rung[bad] == -1 and torch.isnan(res.logits[bad]).all()
others = torch.tensor([i for i in range(len(batch)) if i != bad])
assert torch.isfinite(res.logits[others]).all() and (res.rung[others.numpy()] >= 0).all()
# MLflow
from workbench import tracking
runs = tracking.runs_frame(stage='runtime')
assert run_id in set(tracking.runs_frame()['run_id']) and run_id in set(runs['run_id']), runs
logged = runs.set_index('run_id').loc[run_id]
assert set(runs['tags.mlflow.runName']) == {f'06-runtime-{MODEL}', f'runtime-{MODEL}'}  # evaluate_runtime's too
row = feasible[(feasible['data'] == 'clean') & (feasible['policy'] == 'rule') & (feasible['budget_fraction'] == 0.45)]
assert math.isclose(logged['metrics.clean.rule.0.45.accuracy'], float(row['accuracy'].iloc[0])), logged
"""


@pytest.mark.slow
def test_06_runtime_adaptation(tmp_path, monkeypatch):
    run = run_notebook("06_runtime_adaptation.ipynb", PARAMS, PROBE, tmp_path, monkeypatch)
    text = "".join(
        o.get("text", "") for c in run.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "RuntimeInputError:" in text and "rejected: {5: " in text, text[-2000:]
