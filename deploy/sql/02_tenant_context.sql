-- 02_tenant_context.sql: the tenant context as seen from SQL.
--
-- The proxy sets `nile.tenant_id` (and `nile.user_id` where known) on every upstream
-- connection before a tenant's statements run. These functions read it back.
--
-- * STABLE, never IMMUTABLE: an immutable function may be constant-folded into a cached
--   plan, which would then serve the rows of the tenant that was current at plan time.
-- * LANGUAGE sql without SET clauses, so the planner inlines them into policy quals and
--   `tenant_id = nile.current_tenant_id()` can use an index.
-- * Every name is schema-qualified instead of pinning search_path (a SET clause would
--   prevent inlining).
-- * Fail closed: unset or '' gives NULL, and `tenant_id = NULL` matches no row.
--   A value that is not a uuid raises 22P02 (invalid_text_representation).
-- Idempotent (CREATE OR REPLACE resets a function that was altered to VOLATILE/IMMUTABLE).

\set ON_ERROR_STOP 1
begin;

create schema if not exists nile;
grant usage on schema nile to public;   -- policies call these functions as the querying role

create or replace function nile.current_tenant_id() returns uuid
    language sql stable parallel safe
    as $$ select nullif(pg_catalog.current_setting('nile.tenant_id', true), '')::pg_catalog.uuid $$;

comment on function nile.current_tenant_id() is
    'Tenant of this session (GUC nile.tenant_id) as uuid. NULL when unset or empty (no rows); error when not a uuid.';

-- For deployments whose tenant_id columns are not uuid (tenant ids configured as text).
create or replace function nile.current_tenant_text() returns text
    language sql stable parallel safe
    as $$ select nullif(pg_catalog.current_setting('nile.tenant_id', true), '') $$;

comment on function nile.current_tenant_text() is
    'Tenant of this session (GUC nile.tenant_id) as text. NULL when unset or empty.';

create or replace function nile.current_user_id() returns uuid
    language sql stable parallel safe
    as $$ select nullif(pg_catalog.current_setting('nile.user_id', true), '')::pg_catalog.uuid $$;

comment on function nile.current_user_id() is
    'User of this session (GUC nile.user_id) as uuid. NULL when unset or empty.';

grant execute on function nile.current_tenant_id(), nile.current_tenant_text(), nile.current_user_id()
    to public;

commit;
