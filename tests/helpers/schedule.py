"""Stored scheduler jobs: registered without running, their next run rewritten."""

from __future__ import annotations

import pickle
from datetime import datetime

import sqlalchemy as sa

from newsletter.config import Settings
from newsletter.pipeline import schedule
from newsletter.store.database import Store


def set_stored_next_run(store: Store, job_id: str, when: datetime) -> None:
    """The controlled clock: rewrite a stored job's next run time, as if the service had
    been down since then (APScheduler keeps it pickled in the row and in a column)."""
    table = sa.Table(schedule.JOBS_TABLE, sa.MetaData(), autoload_with=store.engine)
    with store.engine.begin() as conn:
        state = pickle.loads(conn.execute(sa.select(table.c.job_state)
                                          .where(table.c.id == job_id)).scalar_one())
        state["next_run_time"] = when
        conn.execute(table.update().where(table.c.id == job_id).values(
            next_run_time=when.timestamp(), job_state=pickle.dumps(state, 4)))


def register_stopped(settings: Settings, store: Store) -> None:
    scheduler = schedule.make_scheduler(settings, store)
    scheduler.start(paused=True)
    schedule.register_jobs(scheduler, settings)
    scheduler.shutdown(wait=True)
