"""The Optuna RDB storage the workbench opens (:func:`workbench.search.storage.open_storage`): Optuna's own, with
an atomic take of an enqueued trial. A module of its own (imported only when a storage is opened) so the class is
importable by name, as pickling a storage needs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import optuna
from sqlalchemy import DateTime, bindparam, text

_TAKE = text(
    "UPDATE trials SET state = 'RUNNING', datetime_start = :now WHERE trial_id = :id AND state = 'WAITING'"
).bindparams(bindparam("now", type_=DateTime))


class AtomicPopRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose WAITING -> RUNNING transition (a worker taking an enqueued trial) is one
    conditional ``UPDATE``: Optuna reads the state then writes it, relying on ``SELECT ... FOR UPDATE``, which
    SQLite ignores, so two workers could take the same enqueued plan and the second then failed with "Cannot tell
    a COMPLETE trial". The ``trials`` table, its columns and its naive-UTC times are Optuna's stored schema."""

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        if state != optuna.trial.TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        now = datetime.now(UTC).replace(tzinfo=None)  # Optuna stores naive UTC
        with self.engine.begin() as conn:
            done = conn.execute(_TAKE, {"now": now, "id": trial_id})
        if done.rowcount == 1:
            return True
        # a finished trial raises Optuna's error; one another worker took returns False
        self.check_trial_is_updatable(trial_id, self.get_trial(trial_id).state)
        return False
