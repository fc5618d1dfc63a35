-- 03_rls.sql: row-level security for every tenant table, now and later.
--
-- A tenant table is any table with a `tenant_id` column (as in Nile). Each one gets
--   ALTER TABLE ... ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY
--   CREATE POLICY tenant_isolation ... FOR ALL TO public
--       USING (tenant_id = nile.current_tenant_id()) WITH CHECK (same)
-- so a session without a tenant context sees no rows and can insert none.
--
-- Special tables:
--   public.tenants       policy on id: a tenant session sees only its own row.
--   users.tenant_users   an ordinary tenant table (keyed by tenant_id).
--   users.users          no tenant_id: a tenant session sees the users that belong to its
--                        tenant (users.tenant_users) and the session's own user (nile.user_id).
-- Global sessions (admin, migrations) connect as the owner role, which has BYPASSRLS
-- (04_roles.sql), so they see every row.
--
-- New tables: the event trigger nile_tenant_isolation (ddl_command_end; CREATE TABLE,
-- CREATE TABLE AS, SELECT INTO, ALTER TABLE) applies the same to any table that has, or
-- gains, a tenant_id column. It also re-asserts ENABLE + FORCE on every ALTER TABLE of
-- a tenant table (ALTER TABLE ... DISABLE ROW LEVEL SECURITY does not stick while the
-- trigger is enabled), and marks new views over tenant tables security_invoker.
-- CREATE EVENT TRIGGER requires a superuser: run this file as one.
-- The trigger function is SECURITY INVOKER with a pinned search_path: it runs as the role
-- issuing the DDL, which owns the table it just created or altered.
-- Idempotent.

\set ON_ERROR_STOP 1
begin;

-- Policy expression for a key column: uuid columns compare with nile.current_tenant_id()
-- (index-friendly); other types compare as text with nile.current_tenant_text().
create or replace function nile.tenant_policy_expr(rel regclass, key_column name default 'tenant_id')
    returns text
    language plpgsql stable
    set search_path = pg_catalog, pg_temp
as $$
declare
    typ regtype;
begin
    select a.atttypid::regtype into typ
      from pg_attribute a
     where a.attrelid = rel and a.attname = key_column and a.attnum > 0 and not a.attisdropped;
    if typ is null then
        raise exception 'table % has no column %', rel, key_column using errcode = '42703';
    end if;
    if typ = 'uuid'::regtype then
        return format('(%I = nile.current_tenant_id())', key_column);
    end if;
    return format('(%I::text = nile.current_tenant_text())', key_column);
end
$$;

-- Enable, force and (re)create the tenant_isolation policy on one table. Idempotent:
-- the policy is dropped and created again, so a policy edited by hand is normalised.
-- Must be called by the table owner (or a superuser).
create or replace function nile.enable_tenant_isolation(rel regclass, key_column name default 'tenant_id')
    returns void
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
as $$
declare
    expr text := nile.tenant_policy_expr(rel, key_column);
begin
    -- Policy first: the ALTER TABLE below fires the event trigger again (nested), which
    -- then finds the policy in place and has nothing left to do.
    execute format('drop policy if exists tenant_isolation on %s', rel);
    execute format('create policy tenant_isolation on %s as permissive for all to public using %s with check %s',
                   rel, expr, expr);
    execute format('alter table %s enable row level security, force row level security', rel);
end
$$;

comment on function nile.enable_tenant_isolation(regclass, name) is
    'ENABLE + FORCE row level security and create policy tenant_isolation (key column = current tenant). Idempotent.';

-- True when relation rel (a view or materialized view) reads, directly or through other
-- views, a table that has a tenant_id column.
create or replace function nile.reads_tenant_tables(rel oid)
    returns boolean
    language sql stable
    set search_path = pg_catalog, pg_temp
as $$
    with recursive deps(relid) as (
        select d.refobjid
          from pg_rewrite rw
          join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = rw.oid
                          and d.refclassid = 'pg_class'::regclass
         where rw.ev_class = rel and d.refobjid <> rel
        union
        select d.refobjid
          from deps
          join pg_rewrite rw on rw.ev_class = deps.relid
          join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = rw.oid
                          and d.refclassid = 'pg_class'::regclass and d.refobjid <> deps.relid
    )
    select exists (
        select 1 from deps
          join pg_attribute a on a.attrelid = deps.relid
         where a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped
           and (select c.relkind from pg_class c where c.oid = deps.relid) in ('r', 'p'))
$$;

-- The event trigger function. Every action is guarded by a catalog check, so the nested
-- ddl_command_end events caused by its own ALTER TABLE / ALTER VIEW end the recursion.
create or replace function nile.on_ddl_isolate_tenant_tables()
    returns event_trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    r record;
begin
    for r in
        select distinct c.oid, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.reloptions
          from pg_event_trigger_ddl_commands() d
          join pg_class c on c.oid = d.objid
         where d.classid = 'pg_class'::regclass
           and c.relkind in ('r', 'p', 'v')
    loop
        if r.relkind in ('r', 'p') then
            continue when not exists (
                select 1 from pg_attribute a
                 where a.attrelid = r.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped);
            if not exists (select 1 from pg_policy p where p.polrelid = r.oid and p.polname = 'tenant_isolation') then
                perform nile.enable_tenant_isolation(r.oid::regclass);
            elsif not (r.relrowsecurity and r.relforcerowsecurity) then
                execute format('alter table %s enable row level security, force row level security', r.oid::regclass);
            end if;
        else
            -- A view runs with its owner's rights unless security_invoker is set; an owner
            -- with BYPASSRLS would expose every tenant's rows through it.
            continue when exists (
                select 1 from pg_options_to_table(r.reloptions) o
                 where o.option_name = 'security_invoker' and lower(o.option_value) in ('true', 'on', 'yes', '1'));
            if nile.reads_tenant_tables(r.oid) then
                execute format('alter view %s set (security_invoker = true)', r.oid::regclass);
            end if;
        end if;
    end loop;
end
$$;

drop event trigger if exists nile_tenant_isolation;
create event trigger nile_tenant_isolation on ddl_command_end
    when tag in ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE',
                 'CREATE VIEW', 'ALTER VIEW')
    execute function nile.on_ddl_isolate_tenant_tables();

-- Existing tables: every table with a tenant_id column, outside the system schemas.
select nile.enable_tenant_isolation(c.oid::regclass)
  from pg_class c
  join pg_namespace n on n.oid = c.relnamespace
 where c.relkind in ('r', 'p')
   and n.nspname not in ('pg_catalog', 'information_schema')
   and n.nspname not like 'pg\_toast%'
   and n.nspname not like 'pg\_temp\_%'
   and exists (select 1 from pg_attribute a
                where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped);

-- tenants: a tenant session sees (and may update the columns granted in 04) only its own row.
select nile.enable_tenant_isolation('public.tenants', 'id');

-- users.users: visible when the user belongs to the current tenant, or is the session's user.
alter table users.users enable row level security, force row level security;
drop policy if exists tenant_isolation on users.users;
create policy tenant_isolation on users.users as permissive for all to public
    using (id = nile.current_user_id()
           or exists (select 1 from users.tenant_users tu
                       where tu.user_id = users.id and tu.tenant_id = nile.current_tenant_id()))
    with check (id = nile.current_user_id());

commit;
