-- audit.sql: checks a live database for the tenant isolation set-up of deploy/sql.
--
-- Format (read by `tenant-proxy audit`): the file is split on lines `-- check: <name>`.
-- Each part is one SELECT ending with a semicolon, and no other semicolon appears in it.
-- Every query returns rows of three text columns (object, problem, fix), one row per
-- finding: no rows means the check passed. No psql variables are used.
--
-- Run it connected as the role the proxy uses for tenant traffic: the role checks look at
-- current_user and at every other non-superuser login role that does not own tenant tables.
-- A tenant table is a table with a tenant_id column, plus public.tenants.

-- check: rls_disabled
with tenant_tables as (
    select c.oid, format('%I.%I', n.nspname, c.relname) as rel, c.relrowsecurity, c.relforcerowsecurity, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
)
select t.rel::text as object,
       'row level security is disabled: every role that can read the table sees every tenant''s rows'::text as problem,
       format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', t.rel)::text as fix
  from tenant_tables t
 where not t.relrowsecurity
 order by 1;

-- check: rls_not_forced
with tenant_tables as (
    select c.oid, format('%I.%I', n.nspname, c.relname) as rel, c.relrowsecurity, c.relforcerowsecurity, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
)
select t.rel::text as object,
       'row level security is not forced: the table owner (and views or SECURITY DEFINER functions it owns) skip the policies'::text as problem,
       format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel)::text as fix
  from tenant_tables t
 where t.relrowsecurity and not t.relforcerowsecurity
 order by 1;

-- check: no_policy
with tenant_tables as (
    select c.oid, format('%I.%I', n.nspname, c.relname) as rel, c.relrowsecurity, c.relforcerowsecurity, c.relowner,
           case when n.nspname = 'public' and c.relname = 'tenants' then 'id' else 'tenant_id' end as key_column
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
)
select t.rel::text as object,
       'no row level security policy: with RLS enabled nobody sees a row, with RLS disabled everybody sees all'::text as problem,
       format('SELECT nile.enable_tenant_isolation(%L, %L)', t.rel, t.key_column)::text as fix
  from tenant_tables t
 where not exists (select 1 from pg_catalog.pg_policy p where p.polrelid = t.oid)
 order by 1;

-- check: policy_without_tenant_context
with tenant_tables as (
    select c.oid, format('%I.%I', n.nspname, c.relname) as rel, c.relrowsecurity, c.relforcerowsecurity, c.relowner,
           case when n.nspname = 'public' and c.relname = 'tenants' then 'id' else 'tenant_id' end as key_column
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
context_functions as (
    select p.oid
      from pg_catalog.pg_proc p
      join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'nile' and p.proname in ('current_tenant_id', 'current_tenant_text')
)
select format('policy %I on %s', p.polname, t.rel)::text as object,
       'permissive policy does not depend on the tenant context (nile.current_tenant_id() or the nile.tenant_id setting): it is OR-ed with the others and can expose other tenants'' rows'::text as problem,
       format('DROP POLICY %I ON %s then SELECT nile.enable_tenant_isolation(%L, %L)', p.polname, t.rel, t.rel, t.key_column)::text as fix
  from tenant_tables t
  join pg_catalog.pg_policy p on p.polrelid = t.oid
 where p.polpermissive
   and not exists (select 1 from pg_catalog.pg_depend d
                    where d.classid = 'pg_catalog.pg_policy'::regclass and d.objid = p.oid
                      and d.refclassid = 'pg_catalog.pg_proc'::regclass
                      and d.refobjid in (select oid from context_functions))
   and coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '') !~ 'current_setting\(''nile\.tenant_id'''
   and coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), '') !~ 'current_setting\(''nile\.tenant_id'''
 order by 1;

-- check: tenant_function
with context_functions as (
    select p.oid, p.proname, p.provolatile
      from pg_catalog.pg_proc p
      join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'nile' and p.proname in ('current_tenant_id', 'current_tenant_text', 'current_user_id')
),
policy_functions as (
    select p.oid, p.provolatile
      from pg_catalog.pg_proc p
      join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname <> 'pg_catalog'
       and (p.oid in (select oid from context_functions)
            or p.oid in (select d.refobjid from pg_catalog.pg_depend d
                          where d.classid = 'pg_catalog.pg_policy'::regclass
                            and d.refclassid = 'pg_catalog.pg_proc'::regclass))
)
select 'nile.current_tenant_id()'::text as object,
       'missing: policies cannot read the tenant context'::text as problem,
       'run deploy/sql/02_tenant_context.sql then deploy/sql/03_rls.sql'::text as fix
 where not exists (select 1 from context_functions where proname = 'current_tenant_id')
union all
select (f.oid::regprocedure)::text as object,
       case f.provolatile
           when 'i' then 'IMMUTABLE function used for tenant isolation: the planner may fold it into a cached plan, which then serves the rows of whichever tenant was current at planning time'
           else 'VOLATILE function used for tenant isolation: evaluated once per row and never usable in an index condition (full scans of every tenant''s rows)'
       end::text as problem,
       format('ALTER FUNCTION %s STABLE', f.oid::regprocedure)::text as fix
  from policy_functions f
 where f.provolatile <> 's';

-- check: role_attributes
with tenant_tables as (
    select c.oid, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select format('role %I', c.rolname)::text as object,
       'superuser: row level security and every privilege check are skipped'::text as problem,
       format('connect the proxy for tenant traffic with a dedicated role (deploy/sql/04_roles.sql), or ALTER ROLE %I NOSUPERUSER', c.rolname)::text as fix
  from checked c
 where c.rolsuper
union all
select format('role %I', c.rolname)::text,
       'BYPASSRLS: row level security policies are skipped for this role'::text,
       format('ALTER ROLE %I NOBYPASSRLS', c.rolname)::text
  from checked c
 where c.rolbypassrls and not c.rolsuper
 order by 1, 2;

-- check: role_owns_tenant_tables
with tenant_tables as (
    select c.oid, format('%I.%I', n.nspname, c.relname) as rel, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
)
select format('role %I', r.rolname)::text as object,
       format('owns tenant table %s: the owner can disable row level security and drop the policies', t.rel)::text as problem,
       format('ALTER TABLE %s OWNER TO app_owner (the owner/migration role), and use %I only for tenant traffic', t.rel, r.rolname)::text as fix
  from tenant_tables t
  join pg_catalog.pg_roles r on r.oid = t.relowner
 where r.rolname = current_user and not r.rolsuper
 order by 1, 2;

-- check: role_database_privileges
with tenant_tables as (
    select c.oid, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select format('role %I', c.rolname)::text as object,
       format('CREATE on database %I: can create schemas (objects that shadow functions, state left on pooled connections)', current_database())::text as problem,
       format('REVOKE CREATE ON DATABASE %I FROM PUBLIC, %I', current_database(), c.rolname)::text as fix
  from checked c
 where not c.rolsuper and pg_catalog.has_database_privilege(c.oid, current_database(), 'CREATE')
union all
select format('role %I', c.rolname)::text,
       format('TEMP on database %I: temporary tables survive on a pooled upstream connection and can shadow tenant tables for the next client', current_database())::text,
       format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC, %I', current_database(), c.rolname)::text
  from checked c
 where not c.rolsuper and pg_catalog.has_database_privilege(c.oid, current_database(), 'TEMPORARY')
 order by 1, 2;

-- check: role_schema_create
with tenant_tables as (
    select c.oid, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select format('role %I', c.rolname)::text as object,
       format('CREATE on schema %I: can create tables (which it would own, without row level security) and functions or operators that shadow others', n.nspname)::text as problem,
       format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC, %I', n.nspname, c.rolname)::text as fix
  from checked c
 cross join pg_catalog.pg_namespace n
 where not c.rolsuper
   and n.nspname not in ('pg_catalog', 'information_schema')
   and n.nspname !~ '^pg_(toast|temp_)'
   and pg_catalog.has_schema_privilege(c.oid, n.oid, 'CREATE')
 order by 1, 2;

-- check: role_membership
with tenant_tables as (
    select c.oid, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select format('role %I', c.rolname)::text as object,
       format('member of role %I, which %s: SET ROLE %I escapes tenant isolation', g.rolname,
              case when g.rolsuper then 'is a superuser'
                   when g.rolbypassrls then 'has BYPASSRLS'
                   else 'owns tenant tables' end,
              g.rolname)::text as problem,
       format('REVOKE %I FROM %I (or the intermediate role that grants it)', g.rolname, c.rolname)::text as fix
  from checked c
  join pg_catalog.pg_roles g on g.oid <> c.oid
 where not c.rolsuper
   and (g.rolsuper or g.rolbypassrls or g.oid in (select relowner from tenant_tables))
   and pg_catalog.pg_has_role(c.oid, g.oid, 'MEMBER')
 order by 1, 2;

-- check: role_table_privileges
with tenant_tables as (
    select c.oid, format('%I.%I', n.nspname, c.relname) as rel, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select format('role %I', c.rolname)::text as object,
       format('%s on tenant table %s: %s', v.priv, t.rel, v.why)::text as problem,
       format('REVOKE %s ON %s FROM PUBLIC, %I', v.priv, t.rel, c.rolname)::text as fix
  from checked c
 cross join tenant_tables t
 cross join (values ('TRUNCATE', 'TRUNCATE ignores row level security and empties the table for every tenant'),
                    ('TRIGGER', 'a trigger on the table runs code on other tenants'' writes')) as v(priv, why)
 where not c.rolsuper and t.relowner <> c.oid
   and pg_catalog.has_table_privilege(c.oid, t.oid, v.priv)
 order by 1, 2;

-- check: role_set_config
with tenant_tables as (
    select c.oid, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select format('role %I', c.rolname)::text as object,
       'can execute set_config(): the tenant setting can be changed from inside a query the proxy cannot inspect (e.g. query_to_xml)'::text as problem,
       format('REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC, %I  (04_roles.sql with -v revoke_set_config=on, the default, grants it back to the owner role)', c.rolname)::text as fix
  from checked c
 where not c.rolsuper
   and pg_catalog.has_function_privilege(c.oid, 'pg_catalog.set_config(text, text, boolean)', 'EXECUTE')
 order by 1;

-- check: role_plpgsql
with tenant_tables as (
    select c.oid, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select format('role %I', c.rolname)::text as object,
       'USAGE on language plpgsql: DO blocks can run SET nile.tenant_id through EXECUTE, out of the proxy''s sight'::text as problem,
       format('REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC, %I  (04_roles.sql with -v revoke_plpgsql=on, the default, grants it back to the owner role)', c.rolname)::text as fix
  from checked c
 where not c.rolsuper
   and exists (select 1 from pg_catalog.pg_language l where l.lanname = 'plpgsql')
   and pg_catalog.has_language_privilege(c.oid, 'plpgsql', 'USAGE')
 order by 1;

-- check: security_definer_bypass
with tenant_tables as (
    select c.oid, c.relowner
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
)
select (p.oid::regprocedure)::text as object,
       format('SECURITY DEFINER function owned by %I (%s) is executable by role %I: it runs without tenant isolation',
              o.rolname, case when o.rolsuper then 'superuser' else 'BYPASSRLS' end, c.rolname)::text as problem,
       format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC, %I  (or ALTER FUNCTION %s SECURITY INVOKER)',
              p.oid::regprocedure, c.rolname, p.oid::regprocedure)::text as fix
  from pg_catalog.pg_proc p
  join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  join pg_catalog.pg_roles o on o.oid = p.proowner
 cross join checked c
 where p.prosecdef
   and (o.rolsuper or o.rolbypassrls)
   and n.nspname not in ('pg_catalog', 'information_schema')
   and not c.rolsuper and c.oid <> o.oid
   and pg_catalog.has_function_privilege(c.oid, p.oid, 'EXECUTE')
 order by 1, 3;

-- check: views_bypassing_rls
with recursive tenant_tables as (
    select c.oid, c.relowner, c.relforcerowsecurity
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and (exists (select 1 from pg_catalog.pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped)
            or (n.nspname = 'public' and c.relname = 'tenants'))
),
checked as (
    select r.oid, r.rolname, r.rolsuper, r.rolbypassrls
      from pg_catalog.pg_roles r
     where r.rolname = current_user
        or (r.rolcanlogin and not r.rolsuper and r.oid not in (select relowner from tenant_tables))
),
deps as (
    select distinct rw.ev_class as viewid, d.refobjid as relid
      from pg_catalog.pg_rewrite rw
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_rewrite'::regclass and d.objid = rw.oid
                                  and d.refclassid = 'pg_catalog.pg_class'::regclass and d.refobjid <> rw.ev_class
),
reach(viewid, relid) as (
    select viewid, relid from deps
    union
    select r.viewid, d.relid from reach r join deps d on d.viewid = r.relid
),
views as (
    select v.oid, format('%I.%I', n.nspname, v.relname) as rel, v.relkind, o.rolname as owner,
           o.rolsuper or o.rolbypassrls as owner_bypasses,
           exists (select 1 from pg_catalog.pg_options_to_table(v.reloptions) opt
                    where opt.option_name = 'security_invoker'
                      and lower(opt.option_value) in ('true', 'on', 'yes', '1')) as security_invoker,
           exists (select 1 from reach r join tenant_tables t on t.oid = r.relid
                    where r.viewid = v.oid and t.relowner = v.relowner and not t.relforcerowsecurity) as owner_not_forced
      from pg_catalog.pg_class v
      join pg_catalog.pg_namespace n on n.oid = v.relnamespace
      join pg_catalog.pg_roles o on o.oid = v.relowner
     where v.relkind in ('v', 'm')
       and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname !~ '^pg_(toast|temp_)'
       and exists (select 1 from reach r join tenant_tables t on t.oid = r.relid where r.viewid = v.oid)
)
select ('view ' || v.rel)::text as object,
       format('reads tenant tables with the rights of its owner %I, which %s: every tenant''s rows are visible through it',
              v.owner, case when v.owner_bypasses then 'bypasses row level security' else 'owns a table without FORCE ROW LEVEL SECURITY' end)::text as problem,
       format('ALTER VIEW %s SET (security_invoker = true)', v.rel)::text as fix
  from views v
 where v.relkind = 'v' and not v.security_invoker and (v.owner_bypasses or v.owner_not_forced)
union all
select ('materialized view ' || v.rel)::text,
       format('holds rows of tenant tables (as its owner %I saw them) and cannot have row level security, yet role %I can read it', v.owner, c.rolname)::text,
       format('REVOKE SELECT ON %s FROM PUBLIC, %I', v.rel, c.rolname)::text
  from views v
 cross join checked c
 where v.relkind = 'm' and not c.rolsuper
   and pg_catalog.has_table_privilege(c.oid, v.oid, 'SELECT')
 order by 1, 2;

-- check: event_trigger
with isolation_triggers as (
    select e.evtname, e.evtenabled
      from pg_catalog.pg_event_trigger e
      join pg_catalog.pg_proc p on p.oid = e.evtfoid
      join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'nile' and p.proname = 'on_ddl_isolate_tenant_tables' and e.evtevent = 'ddl_command_end'
)
select 'event trigger nile_tenant_isolation'::text as object,
       'missing: tables created from now on get no row level security'::text as problem,
       'run deploy/sql/03_rls.sql as a superuser'::text as fix
 where not exists (select 1 from isolation_triggers)
union all
select format('event trigger %I', t.evtname)::text,
       case t.evtenabled
           when 'D' then 'disabled: tables created from now on get no row level security'
           else 'enabled for replica sessions only: tables created by ordinary sessions get no row level security'
       end::text,
       format('ALTER EVENT TRIGGER %I ENABLE', t.evtname)::text
  from isolation_triggers t
 where t.evtenabled in ('D', 'R')
 order by 1;
