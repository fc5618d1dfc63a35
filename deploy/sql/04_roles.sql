-- 04_roles.sql: the two roles the proxy uses upstream.
--
--   :owner_role (default app_owner)    owns the tables; migrations and global (no-tenant)
--       sessions. LOGIN NOSUPERUSER BYPASSRLS (set owner_bypassrls=off to keep it subject
--       to the policies: then global sessions see no tenant rows either).
--   :proxy_role (default tenant_proxy) tenant traffic. LOGIN NOSUPERUSER NOBYPASSRLS
--       NOCREATEDB NOCREATEROLE NOREPLICATION, owns nothing, member of no role that
--       bypasses RLS, no CREATE on the database or any schema, no TEMP, DML on the
--       application tables only (TRUNCATE ignores RLS and is never granted).
--
-- psql variables (all optional):
--   proxy_role        default tenant_proxy
--   proxy_password    password to set; when absent the password is left as it is
--   owner_role        default app_owner
--   owner_password    password to set; when absent the password is left as it is
--   owner_bypassrls   on (default) | off
--   revoke_set_config on (default) | off   REVOKE EXECUTE ON pg_catalog.set_config FROM PUBLIC
--   revoke_plpgsql    on (default) | off   REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC
--
-- Trade-offs of the last two (both apply to this database only, not the cluster):
--   set_config(): `SET` itself cannot be revoked, but set_config() can be called where
--     the proxy's guard cannot see it (e.g. inside query_to_xml('select set_config(...)')).
--     Revoking it breaks clients that call it: pg_dump does, so run pg_dump as a
--     superuser or as the owner role (granted back below). Some ORMs/PostgREST use it.
--   plpgsql: without USAGE a role cannot run DO blocks (`DO $$ begin execute 'set
--     nile.tenant_id = ...'; end $$` would switch tenants) nor create plpgsql functions;
--     calling existing plpgsql functions keeps working. The owner role keeps USAGE.
--
-- Needs a superuser (role attributes BYPASSRLS, REVOKE on pg_catalog objects).
-- Idempotent.

\set ON_ERROR_STOP 1
\if :{?proxy_role}
\else
    \set proxy_role tenant_proxy
\endif
\if :{?owner_role}
\else
    \set owner_role app_owner
\endif
\if :{?owner_bypassrls}
\else
    \set owner_bypassrls on
\endif
\if :{?revoke_set_config}
\else
    \set revoke_set_config on
\endif
\if :{?revoke_plpgsql}
\else
    \set revoke_plpgsql on
\endif

begin;

-- Roles (cluster-wide objects).
select format('create role %I', :'owner_role')
 where not exists (select 1 from pg_catalog.pg_roles where rolname = :'owner_role') \gexec
select format('create role %I', :'proxy_role')
 where not exists (select 1 from pg_catalog.pg_roles where rolname = :'proxy_role') \gexec

\if :owner_bypassrls
alter role :"owner_role" login nosuperuser bypassrls nocreaterole noreplication;
\else
alter role :"owner_role" login nosuperuser nobypassrls nocreaterole noreplication;
\endif
alter role :"proxy_role" login nosuperuser nobypassrls nocreatedb nocreaterole noreplication;

\if :{?owner_password}
select format('alter role %I password %L', :'owner_role', :'owner_password') \gexec
\endif
\if :{?proxy_password}
select format('alter role %I password %L', :'proxy_role', :'proxy_password') \gexec
\endif

-- The proxy role must not be able to become a role that bypasses RLS, is a superuser,
-- or owns a tenant table (SET ROLE would give it all of that).
select format('revoke %I from %I', g.rolname, m.rolname)
  from pg_catalog.pg_auth_members am
  join pg_catalog.pg_roles g on g.oid = am.roleid
  join pg_catalog.pg_roles m on m.oid = am.member
 where m.rolname = :'proxy_role'
   and exists (select 1 from pg_catalog.pg_roles t
                where pg_catalog.pg_has_role(g.oid, t.oid, 'MEMBER')
                  and (t.rolsuper or t.rolbypassrls or t.rolname = :'owner_role'
                       or exists (select 1 from pg_catalog.pg_class c where c.relowner = t.oid))) \gexec

-- Ownership: the Nile tables, and anything the proxy role owns in this database, go to
-- the owner role.
select format('alter table %s owner to %I', c.oid::regclass, :'owner_role')
  from pg_catalog.pg_class c
 where c.oid in ('public.tenants'::regclass, 'users.users'::regclass, 'users.tenant_users'::regclass)
   and c.relowner <> (select oid from pg_catalog.pg_roles where rolname = :'owner_role') \gexec
select format('alter %s %s owner to %I',
              case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                             when 'S' then 'sequence' when 'f' then 'foreign table' else 'table' end,
              c.oid::regclass, :'owner_role')
  from pg_catalog.pg_class c
 where c.relowner = (select oid from pg_catalog.pg_roles where rolname = :'proxy_role')
   and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
   and not exists (select 1 from pg_catalog.pg_depend d          -- owned sequences follow their table
                    where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i')
                      and c.relkind = 'S') \gexec
select format('alter schema %I owner to %I', n.nspname, :'owner_role')
  from pg_catalog.pg_namespace n
 where n.nspowner = (select oid from pg_catalog.pg_roles where rolname = :'proxy_role') \gexec

-- Database: no CREATE (schemas) and no TEMP for PUBLIC or the proxy role; the owner role
-- keeps both. CONNECT is left to pg_hba.conf and the existing grants.
select format('revoke create, temporary on database %I from public, %I', current_database(), :'proxy_role') \gexec
select format('grant create, temporary, connect on database %I to %I', current_database(), :'owner_role') \gexec
select format('grant connect on database %I to %I', current_database(), :'proxy_role') \gexec

-- Schemas: CREATE for the owner role only (PostgreSQL 15 already denies it to PUBLIC
-- on public; older clusters did not).
revoke create on schema public, nile, users from public;
revoke create on schema public, nile, users from :"proxy_role";
grant usage, create on schema public, users to :"owner_role";
grant usage on schema public, nile, users to :"proxy_role";

-- Tables in public: DML, filtered by the policies. No TRUNCATE/TRIGGER/REFERENCES.
grant select, insert, update, delete on all tables in schema public to :"proxy_role";
revoke truncate, trigger, references on all tables in schema public from :"proxy_role";
grant usage, select on all sequences in schema public to :"proxy_role";
-- Tables the owner role creates later get the same grants.
alter default privileges for role :"owner_role" in schema public
    grant select, insert, update, delete on tables to :"proxy_role";
alter default privileges for role :"owner_role" in schema public
    grant usage, select on sequences to :"proxy_role";

-- tenants: creating, deleting or (un)suspending tenants is a global operation.
revoke insert, update, delete on public.tenants from :"proxy_role";
grant update (name, updated) on public.tenants to :"proxy_role";
-- users: read only for tenants (policy: members of the current tenant, own user).
revoke all on users.users from :"proxy_role";
grant select on users.users to :"proxy_role";
revoke all on users.tenant_users from :"proxy_role";
grant select, insert, update, delete on users.tenant_users to :"proxy_role";

-- The tenant context functions (also granted to PUBLIC by 02).
grant execute on function nile.current_tenant_id(), nile.current_tenant_text(), nile.current_user_id()
    to :"proxy_role";

\if :revoke_set_config
revoke execute on function pg_catalog.set_config(text, text, boolean) from public;
revoke execute on function pg_catalog.set_config(text, text, boolean) from :"proxy_role";
grant execute on function pg_catalog.set_config(text, text, boolean) to :"owner_role";
\else
grant execute on function pg_catalog.set_config(text, text, boolean) to public;
\endif

\if :revoke_plpgsql
revoke usage on language plpgsql from public;
revoke usage on language plpgsql from :"proxy_role";
grant usage on language plpgsql to :"owner_role";
\else
grant usage on language plpgsql to public;
\endif

commit;
