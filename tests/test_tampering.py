"""Files the workbench writes and later trusts, edited by someone who also recomputes their plain hash: each is
refused with an error naming the file, and nothing in it is used (issue 22's tampering acceptance).

The sensitivity cache, a measured-plan dataset line, a QAT checkpoint and a packed ``.wbq`` header each carry a
signature under this installation's key (:mod:`workbench._common.signed`), which an editor cannot recompute.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest
import torch

from tests.qat.conftest import tiny_task  # noqa: F401 - the fixture
from workbench._common.signed import UntrustedFileError
from workbench.predictor.cache import (
    _CacheWriter,
    _line_sha,
    _plain_line_sha,
    _read_cache,
    _signed,
)
from workbench.qat import QATConfig, QATError, train_qat
from workbench.quant import QuantPlan, load_packed, quantize_model, read_header, save_packed
from workbench.quant.pack import MAGIC
from workbench.sensitivity import SensitivityResult, _canonical_json


@pytest.fixture(autouse=True)
def _own_installation(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))  # a fresh key of this test's own
    monkeypatch.delenv("WORKBENCH_TRUST_OLD_FILES", raising=False)


def test_sensitivity_cache_with_an_edited_value_and_recomputed_sha256_is_refused(tmp_path) -> None:
    import pandas as pd

    table = pd.DataFrame({"layer": ["a", "b"], "bits": [4, 4], "value": [0.1, 0.2]})
    layers = pd.DataFrame({"layer": ["a", "b"], "params": [10, 20]})
    path = SensitivityResult(table=table, layers=layers, info={"cache_key": "k"}).save(tmp_path / "s.json")
    assert SensitivityResult.load(path, key="k").table["value"].tolist() == [0.1, 0.2]
    doc = json.loads(path.read_text())
    doc["payload"]["tables"]["table"]["data"][-1] = [0.1, 0.0]  # b looks insensitive now
    doc["sha256"] = hashlib.sha256(_canonical_json(doc["payload"]).encode()).hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(UntrustedFileError, match="failed its signature check") as err:
        SensitivityResult.load(path, key="k")
    assert str(path) in str(err.value)


def test_plan_dataset_line_with_an_edited_accuracy_and_recomputed_checksum_is_refused(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    writer = _CacheWriter(
        path, _signed({"type": "header", "key": "k", "layer_names": ["a"], "checksums": 1}, "k")
    )
    for plan_id, acc in (("p1", 0.5), ("p2", 0.4)):
        writer.write(
            _signed({"type": "plan", "plan_id": plan_id, "w_bits": [4], "a_bits": [8], "accuracy": acc}, "k")
        )
    writer.close()
    lines = path.read_text().splitlines()
    edited = {**json.loads(lines[2]), "accuracy": 0.99}
    edited["sha"] = _plain_line_sha(edited, "k")  # the plain checksum, recomputed
    assert edited["sha"] != _line_sha(edited, "k")
    path.write_text("\n".join([*lines[:2], json.dumps(edited)]) + "\n")
    contents = _read_cache(path)
    assert set(contents.records) == {"p1"}  # the edited plan is not used (it is measured again)
    assert contents.problems == [(3, "plan p2 fails its checksum (edited, or from another file)")]


def test_qat_checkpoint_with_an_edited_weight_and_recomputed_content_hash_is_refused(tiny_task, tmp_path):  # noqa: F811
    from workbench.qat.checkpoint import _content_hash

    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", tiny_task.model)
    path = tmp_path / "ck.pt"
    config = QATConfig(epochs=1, checkpoint=str(path))
    train_qat(tiny_task, plan, config, track=False, progress=False)
    ckpt = torch.load(path, weights_only=True)
    name = next(k for k, v in ckpt["model_state"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["model_state"][name] = ckpt["model_state"][name] + 1e-2
    signature = ckpt.pop("signature")
    ckpt.pop("content_sha256")
    ckpt["content_sha256"] = _content_hash(ckpt)
    ckpt["signature"] = signature
    torch.save(ckpt, path)
    data = path.read_bytes()
    with pytest.raises(QATError, match="failed its signature check") as err:
        train_qat(tiny_task, plan, config.with_(resume=True), track=False, progress=False)
    assert str(path) in str(err.value)
    assert path.read_bytes() == data  # refused, never overwritten


def test_packed_header_with_an_edited_plan_and_recomputed_payload_hash_is_refused(tiny_task, tmp_path):  # noqa: F811
    model = tiny_task.model
    q = quantize_model(
        model, QuantPlan.from_shorthand("uniform:w4a8:per_channel", model), tiny_task.calib_loader
    )
    path = tmp_path / "m.wbq"
    save_packed(q, path)
    header, offset = read_header(path)
    payload = path.read_bytes()[offset:]
    first = next(iter(header["plan"]))
    header["plan"][first]["w_bits"] = 8  # claims 8-bit codes where 4-bit ones are stored
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    blob = zlib.compress(json.dumps(header, separators=(",", ":")).encode())
    path.write_bytes(MAGIC + struct.pack("<I", len(blob)) + blob + payload)
    with pytest.raises(UntrustedFileError, match="failed its signature check") as err:
        load_packed(path, model)
    assert str(path) in str(err.value)
