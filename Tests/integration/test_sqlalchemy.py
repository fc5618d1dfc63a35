"""SQLAlchemy through tenant-proxy: an unchanged ORM application, two tenants, few upstream
connections.

The ORM maps the demo's `todos` table (deploy/sql, RLS on `nile.tenant_id`) and runs what an
application does, through SQLAlchemy's own connection pool and the proxy's: reflection (catalog
queries), selects, inserts, updates, deletes, commits and rollbacks, from threads of two pinned
users (alice: acme, bob: globex) at once over two upstream connections, in both pool modes.
Every row a client reads must be its tenant's; a row written for the other tenant is refused
(42501). The sync engine uses psycopg 3 (server-side prepared statements after five runs of a
statement, so named statements cross lent connections in transaction mode); the asyncio engine
uses asyncpg (a named prepared statement for every statement, through SQLAlchemy's statement
cache, or unnamed ones with the cache off).

    python3 -m pytest Tests/integration/test_sqlalchemy.py -q
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid

import pytest
from sqlalchemy import (Boolean, MetaData, String, create_engine, func, inspect, select,
                        text)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pooling_support as ps
import tenancy_support as ts
from pooling_support import make_pool_tproxy, pool_tcluster  # noqa: F401

TENANT_OF = {"alice": ts.ACME, "bob": ts.GLOBEX}
OTHER = {"alice": ts.GLOBEX, "bob": ts.ACME}


class Base(DeclarativeBase):
    pass


class Todo(Base):
    """The demo table as an application declares it: no tenant logic in the model."""
    __tablename__ = "todos"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True,
                                          default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    title: Mapped[str] = mapped_column(String(256))
    complete: Mapped[bool] = mapped_column(Boolean, default=False)


def url(proxy, user: str, driver: str) -> str:
    return (f"postgresql+{driver}://{user}:{ps.password_of(user)}@{proxy.host}:{proxy.port}/"
            f"{ts.APP_DB}")


def sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) \
        or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


@pytest.fixture(scope="module")
def demo_ids(pool_tcluster):
    """tenant id -> the demo rows' ids, as the superuser sees them."""
    return {tid: pool_tcluster.todo_ids(tid) for tid in (ts.ACME, ts.GLOBEX)}


def orm_worker(engine, user: str, n: int, demo_ids: dict) -> None:
    """One thread's work: every read checked against the user's tenant."""
    mine = uuid.UUID(TENANT_OF[user])
    for i in range(12):
        with Session(engine) as s:
            rows = s.scalars(select(Todo)).all()
            assert {r.tenant_id for r in rows} == {mine}, (user, i)
            assert demo_ids[str(mine)] <= {str(r.id) for r in rows}, (user, i)
            assert s.execute(text("SELECT current_setting('nile.tenant_id')")).scalar() == str(mine)
        # insert, read back, update, delete: each its own transaction
        title = f"{user}-{n}-{i}"
        with Session(engine) as s, s.begin():
            s.add(Todo(tenant_id=mine, title=title))
        with Session(engine) as s, s.begin():
            todo = s.scalars(select(Todo).where(Todo.title == title)).one()
            assert todo.tenant_id == mine and todo.complete is False
            todo.complete = True
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(Todo)
                            .where(Todo.title == title, Todo.complete.is_(True))) == 1
            s.delete(s.scalars(select(Todo).where(Todo.title == title)).one())
            s.commit()
            assert s.scalar(select(func.count()).select_from(Todo).where(Todo.title == title)) == 0
        # a rolled-back insert leaves nothing
        with Session(engine) as s:
            s.add(Todo(tenant_id=mine, title=title + "-rolled-back"))
            s.flush()
            assert s.scalar(select(func.count()).select_from(Todo)
                            .where(Todo.title == title + "-rolled-back")) == 1
            s.rollback()
            assert s.scalar(select(func.count()).select_from(Todo)
                            .where(Todo.title == title + "-rolled-back")) == 0
        if i % 4 == 0:
            # a row for the other tenant: refused by the policy, the session usable after
            with Session(engine) as s:
                s.add(Todo(tenant_id=uuid.UUID(OTHER[user]), title="not mine"))
                with pytest.raises(DBAPIError) as ei:
                    s.flush()
                assert sqlstate(ei.value) == "42501", ei.value
                s.rollback()
                assert s.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.timeout_s(240)
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_sqlalchemy_orm_tenants_interleaved(make_pool_tproxy, demo_ids, mode):
    # session mode lends a connection per client: enough of them for SQLAlchemy's pools
    proxy = make_pool_tproxy(mode=mode, size=2 if mode == "transaction" else 8)
    engines = {user: create_engine(url(proxy, user, "psycopg"), pool_size=3, max_overflow=0,
                                   pool_pre_ping=True,
                                   connect_args={"sslmode": "disable", "connect_timeout": 10})
               for user in TENANT_OF}
    try:
        # reflection: the catalog queries SQLAlchemy runs, through the proxy
        insp = inspect(engines["alice"])
        assert "todos" in insp.get_table_names()
        assert {c["name"] for c in insp.get_columns("todos")} >= {"id", "tenant_id", "title",
                                                                  "complete"}
        meta = MetaData()
        meta.reflect(bind=engines["bob"], only=["todos"])
        assert set(meta.tables["todos"].primary_key.columns.keys()) == {"tenant_id", "id"}

        jobs = [(user, n) for user in TENANT_OF for n in range(3)]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            futures = [pool.submit(orm_worker, engines[u], u, n, demo_ids) for u, n in jobs]
            errors = [f.exception() for f in futures if f.exception() is not None]
        assert not errors, f"{errors[0]!r}\n--- proxy stderr ---\n{proxy.stderr()}"
    finally:
        for e in engines.values():
            e.dispose()


@pytest.mark.timeout_s(240)
@pytest.mark.parametrize("cache", [100, 0], ids=["statement-cache", "no-statement-cache"])
def test_sqlalchemy_asyncio_asyncpg_transaction_mode(make_pool_tproxy, demo_ids, cache):
    proxy = make_pool_tproxy(mode="transaction", size=2)

    async def main():
        engines = {user: create_async_engine(url(proxy, user, "asyncpg") +
                                             f"?prepared_statement_cache_size={cache}",
                                             pool_size=3, max_overflow=0,
                                             connect_args={"ssl": False, "timeout": 15,
                                                           "statement_cache_size": cache})
                   for user in TENANT_OF}

        async def client(user: str, n: int):
            mine = uuid.UUID(TENANT_OF[user])
            factory = async_sessionmaker(engines[user], expire_on_commit=False)
            for i in range(10):
                async with factory() as s:
                    rows = (await s.scalars(select(Todo))).all()
                    assert {r.tenant_id for r in rows} == {mine}, (user, i)
                    assert demo_ids[str(mine)] <= {str(r.id) for r in rows}
                title = f"async-{user}-{n}-{i}"
                async with factory() as s, s.begin():
                    s.add(Todo(tenant_id=mine, title=title))
                async with factory() as s:
                    async with s.begin():
                        got = (await s.scalars(select(Todo).where(Todo.title == title))).one()
                        assert got.tenant_id == mine
                        await s.delete(got)
                    assert await s.scalar(select(func.count()).select_from(Todo)
                                          .where(Todo.title == title)) == 0
                if i % 3 == 0:
                    async with factory() as s:
                        s.add(Todo(tenant_id=uuid.UUID(OTHER[user]), title="not mine"))
                        with pytest.raises(DBAPIError) as ei:
                            await s.flush()
                        assert sqlstate(ei.value) == "42501", ei.value
                        await s.rollback()

        try:
            results = await asyncio.gather(*(client(u, n) for u in TENANT_OF for n in range(4)),
                                           return_exceptions=True)
        finally:
            for e in engines.values():
                await e.dispose()
        return [r for r in results if isinstance(r, BaseException)]

    errors = asyncio.run(asyncio.wait_for(main(), 200))
    assert not errors, f"{errors[0]!r}\n--- proxy stderr ---\n{proxy.stderr()}"
