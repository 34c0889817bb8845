"""AIMET's post-training tools on one of our float models: QuantSim (``tf`` = min-max, ``tf_enhanced`` = SQNR
ranges), cross-layer equalization and AdaRound, at the bit widths / granularities ``bench/ptq_bench.py`` asks for.

Runs in the peers venv (``bash bench/peers/setup.sh`` builds ``.venv-peers``), started by ``bench/ptq_bench.py``:

    .venv-peers/bin/python bench/peers/aimet_ptq.py --work DIR

``DIR`` holds what the main script wrote: ``model.pt`` (builder name, state_dict, its digest), ``data.pt``
(calibration and test inputs) and ``runs.json`` (one dict per run: label, scheme, w_bits, a_bits, granularity,
cle, adaround_iters). For every run this script writes the quantized model's test logits to ``DIR/aimet.pt``
(``{"meta": {...}, "runs": {label: {"logits", "seconds", "error"}}}``); metrics are computed by the main script
on both sides alike. A run that fails is recorded with its error instead of logits.

Flow per run, AIMET's documented PTQ recipe: ``prepare_model`` (functional adds become modules, so they are
quantized), then ``equalize_model`` (CLE: BN fold + cross-layer scaling + high-bias fold) or ``fold_all_batch_norms``,
then optionally ``Adaround.apply_adaround`` (weights only, its encodings frozen in the sim), then
``QuantizationSimModel`` with AIMET's default per-tensor or per-channel config and ``compute_encodings`` on the
calibration inputs. AIMET 2.42 ships no bias correction (the v1 API was removed), so there is no such run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import sys
import tempfile
import time
import traceback
import warnings
from importlib.metadata import version as dist_version
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptq_models import build_float_model, state_digest  # noqa: E402

BATCH = 32


@torch.no_grad()
def _forward_all(model, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def _scheme(name: str):
    from aimet_torch.common.defs import QuantScheme

    schemes = {"tf": QuantScheme.post_training_tf, "tf_enhanced": QuantScheme.post_training_tf_enhanced}
    if name not in schemes:
        raise ValueError(f"unknown AIMET scheme {name!r}; valid: {sorted(schemes)}")
    return schemes[name]


def _config(granularity: str) -> str:
    from aimet_torch.common.quantsim_config import utils

    if granularity == "per_channel":
        return utils.get_path_for_per_channel_config()
    if granularity == "per_tensor":
        return utils.get_path_for_per_tensor_config()
    raise ValueError(f"unknown granularity {granularity!r}; valid: per_tensor, per_channel")


def _prepared(model, dummy: torch.Tensor, *, cle: bool):
    """AIMET's model preparation, then CLE (which folds BN itself) or a plain BN fold. Returns (model, folded)."""
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.cross_layer_equalization import equalize_model
    from aimet_torch.model_preparer import prepare_model

    prepared = prepare_model(copy.deepcopy(model))
    if cle:
        equalize_model(prepared, dummy_input=dummy)
        return prepared, -1
    return prepared, len(fold_all_batch_norms(prepared, input_shapes=None, dummy_input=dummy))


def _adaround(model, dummy, x_cal, run: dict, workdir: str):
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters

    loader = DataLoader(TensorDataset(x_cal), batch_size=BATCH, shuffle=False)
    params = AdaroundParameters(
        data_loader=loader,
        num_batches=len(loader),
        default_num_iterations=int(run["adaround_iters"]),
        forward_fn=lambda m, batch: m(batch[0]),
    )
    prefix = "ada_" + "".join(c if c.isalnum() else "_" for c in run["label"])
    rounded = Adaround.apply_adaround(
        model,
        dummy,
        params,
        path=workdir,
        filename_prefix=prefix,
        default_param_bw=int(run["w_bits"]),
        default_quant_scheme=_scheme(run["scheme"]),
        default_config_file=_config(run["granularity"]),
    )
    return rounded, str(Path(workdir) / f"{prefix}.encodings")


def run_one(model, run: dict, x_cal: torch.Tensor, x_test: torch.Tensor, workdir: str) -> torch.Tensor:
    """The test logits of AIMET's quantized simulation of ``model`` for one run."""
    from aimet_torch.quantsim import QuantizationSimModel

    dummy = x_cal[:1].clone()
    prepared, _ = _prepared(model, dummy, cle=bool(run.get("cle")))
    encodings = None
    if int(run.get("adaround_iters") or 0) > 0:
        prepared, encodings = _adaround(prepared, dummy, x_cal, run, workdir)
    sim = QuantizationSimModel(
        prepared,
        dummy_input=dummy,
        quant_scheme=_scheme(run["scheme"]),
        default_param_bw=int(run["w_bits"]),
        default_output_bw=int(run["a_bits"]),
        config_file=_config(run["granularity"]),
    )
    if encodings is not None:
        sim.set_and_freeze_param_encodings(encoding_path=encodings)
    sim.compute_encodings(lambda m, _: _forward_all(m, x_cal), None)
    return _forward_all(sim.model.eval(), x_test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder written by bench/ptq_bench.py")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # AIMET logs every prepared node at INFO / WARNING
    warnings.filterwarnings("ignore")

    saved = torch.load(args.work / "model.pt", map_location="cpu", weights_only=True)
    data = torch.load(args.work / "data.pt", map_location="cpu", weights_only=True)
    runs = json.loads((args.work / "runs.json").read_text())
    model = build_float_model(saved["name"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    digest = state_digest(model)
    if digest != saved["digest"]:
        raise SystemExit(f"state digest {digest} != {saved['digest']}: not the same float model")
    out: dict = {
        "meta": {"aimet_version": dist_version("aimet-torch"), "torch": torch.__version__, "digest": digest}
    }
    out["runs"] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for run in runs:
            start = time.perf_counter()
            entry: dict = {"error": None}
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    entry["logits"] = run_one(model, run, data["x_cal"], data["x_test"], workdir)
            except Exception as err:  # noqa: BLE001 - a failing peer call is a result, recorded with its message
                entry["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                traceback.print_exc()
            entry["seconds"] = round(time.perf_counter() - start, 2)
            out["runs"][run["label"]] = entry
            print(
                f"  AIMET {saved['name']} {run['label']}: {entry['seconds']:.1f} s {entry['error'] or ''}",
                flush=True,
            )
            torch.save(out, args.work / "aimet.pt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
