"""Execute notebook 07 (bring your own model: the BERT-style DigitsBert) headless with small parameters, then
probe its live kernel."""

from __future__ import annotations

import pytest

from tests.test_notebooks import run_notebook

# the default 40 training epochs: the DigitsBert that tests/tasks/test_digits_bert.py and the example task file
# use (one cached model for all)
PARAMS = (
    "METRIC = 'cosine'\nTRAIN_EPOCHS = 40\nTHREADS = 1\nPROFILE_BATCHES = 1\nLATENCY_REPEATS = 2\n"
    "W_BITS = (3, 4, 5, 6, 8)\nSENS_METRICS = ('output_mse',)\nCALIB_BATCHES = 1\nPREDICTOR_PLANS = 16\n"
    "FOLDS = 3\nBUDGET = 6\nQAT_EPOCHS = 1\nQAT_STEPS = 4\nBATCH_SIZE = 16\nREPEATS = 3\nTRACK = True\n"
)

PROBE = """
import math
from workbench.quant import quantizable_layers
names = quantizable_layers(task.model)
modules = dict(task.model.named_modules())
assert names[0] == 'embeddings.word_embeddings' and len(names) == 16 and 'pooler.dense' in names, names
# the profile: one row per quantizable layer, the embeddings a lookup without MACs
assert set(profile.index) == set(names), list(profile.index)
assert profile.loc['embeddings.word_embeddings', 'type'] == 'Embedding'
assert profile.loc['embeddings.word_embeddings', 'macs'] == 0 and profile.loc['classifier', 'macs'] > 0
# weight-only plans: activations float, the pooler left out, covered_fraction = quantized weights / all params
short, pattern = plans['shorthand w4'], plans['patterns w8 / dense+embeddings w4']
for p in (short, pattern, plans['searched']):
    assert 'pooler.dense' not in p and all(s.a_bits == 32 for _, s in p.items()), p
assert 'embeddings.word_embeddings' in short and all(s.w_bits == 4 for _, s in short.items())
pattern_bits = {n: s.w_bits for n, s in pattern.items()}
assert pattern_bits['encoder.layer.1.intermediate.dense'] == 4 == pattern_bits['embeddings.word_embeddings']
assert pattern_bits['encoder.layer.0.attention.self.query'] == pattern_bits['classifier'] == 8
total = sum(p.numel() for p in task.model.parameters())
covered = sum(modules[n].weight.numel() for n in names if n != 'pooler.dense')
row = coverage.loc['shorthand w4']
assert row['avg_act_bits'] == 32 and row['total_params'] == total and row['covered_params'] == covered, row
assert math.isclose(row['covered_fraction'], covered / total) and 0.9 < row['covered_fraction'] < 1, row
# sensitivity: weight probes only (no activation probe on a weight-only study), the embeddings included
assert set(sens.table['layer']) == set(names) and set(sens.table['kind']) == {'weight'}, sens.table
# predictor on weight-only plans
assert len(dataset) == PREDICTOR_PLANS and list(scores['model']) == ['ridge', 'gbt'], scores
# the search: every measured plan weight-only, the pooler never quantized
assert search.real_evaluations == BUDGET and len(search.front) >= 1, search.trials
assert (search.trials['avg_act_bits'] == 32).all() and (search.front['avg_act_bits'] == 32).all()
assert search.info['space_units'] == 13  # the pooler excluded, the two embedding tables not asked for
assert best['space_avg_bits'] <= MAX_AVG_BITS  # the budget counts the searched layers
# quantized plans measured on the test split (fidelity to FP32)
acc = table.set_index('name')['accuracy']
assert fp32_metric == acc['FP32'] == 1.0, acc
assert acc['shorthand w4'] > 0.98 and acc['patterns w8 / dense+embeddings w4'] > 0.98, acc
assert (table.set_index('name').drop('FP32')['avg_act_bits'] == 32).all(), table
# packed round trip: identical outputs, a fraction of the FP32 bytes
assert round_trip_exact is True
assert report.file_bytes < report.fp32_bytes / 3, report
# QAT on dict batches
assert qat.steps == QAT_STEPS and qat.avg_act_bits == 32, qat
assert qat.accuracy_after > 0.95 and qat.accuracy_before > 0.9, (qat.accuracy_before, qat.accuracy_after)
assert list(qat_summary['name']) == ['uniform:w3:per_channel']
# real kernels: dynamic int8 and bf16 stay close to FP32
dep = deploy.set_index('variant')
assert list(dep.index) == ['fp32', 'dynamic_int8', 'bf16'], dep
assert dep.loc['dynamic_int8', 'cosine_to_fp32'] > 0.99 and dep.loc['bf16', 'cosine_to_fp32'] > 0.99, dep
assert (dep['median_ms'] > 0).all() and deploy.attrs['repeats'] == REPEATS
assert len(deploy_fig.data) == 2 and list(deploy_fig.data[0].x) == ['fp32', 'dynamic_int8', 'bf16']
# the explorer: a row per quantizable layer, the embeddings included; weight-only start at 8 bits
assert [u.name for u in explorer.space.units] == names
assert ('embeddings.word_embeddings', 'w_bits') in explorer.controls
assert explorer.plan == explorer_space.uniform_plan(8, 32), explorer.plan
v = explorer.values
assert v['avg_act_bits'] == 32 and v['avg_weight_bits'] == 8 and v['predicted_accuracy'] is not None, v
assert math.isclose(v['covered_fraction'], sum(modules[n].weight.numel() for n in names) / total), v
assert 'float32 (none quantized)' in explorer.summary.value
first_row = explorer.grid.children[2 * (1 + len(explorer.columns))]  # after the header and 'all units' rows
assert 'embeddings.word_embeddings' in first_row.value and 'Embedding, weight-only' in first_row.value
explorer.load_front(0)
assert explorer.plan == search.plans()[0]
assert explorer.values['weight_bytes'] == search.front['weight_bytes'][0]
searched = sum(modules[n].weight.numel() for n in names if n != 'pooler.dense' and not n.startswith('embeddings.'))
assert math.isclose(explorer.values['covered_fraction'], searched / total)  # the search's plan: pooler, tables float
for n in [n for n in names if n.startswith('embeddings.')]:  # the search left the tables float: quantize them
    explorer.set(n, 'method', 'quantize')
w = explorer.values['weight_bytes']
emb = explorer.controls[('embeddings.word_embeddings', 'w_bits')].value
explorer.set('embeddings.word_embeddings', 'w_bits', 3 if emb != 3 else 8)
assert explorer.values['weight_bytes'] != w
explorer.set('pooler.dense', 'method', 'quantize')
assert 'pooler.dense' in explorer.plan
assert math.isclose(explorer.values['covered_fraction'], v['covered_fraction'])  # every layer quantized
assert explorer.evaluate() > 0.9
# MLflow
from workbench import tracking
assert run_id in set(tracking.runs_frame()['run_id'])
assert len(tracking.runs_frame(stage='search')) == 1 and len(tracking.runs_frame(stage='qat')) == 1
assert explorer.log() in set(tracking.runs_frame(stage='explorer')['run_id'])
"""


@pytest.mark.slow
def test_07_bring_your_own_model(tmp_path, monkeypatch):
    params = PARAMS + f"STORAGE = 'sqlite:///{tmp_path}/search.db'\n"
    run_notebook("07_bring_your_own_model.ipynb", params, PROBE, tmp_path, monkeypatch)
