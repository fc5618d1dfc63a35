-- 01_nile_schema.sql: Nile-compatible built-in tables on vanilla PostgreSQL.
--
-- Shape follows Nile: `tenants` in schema public, users in schema `users`
-- (`users.users`, `users.tenant_users`), so SQL written for Nile runs unchanged.
-- Idempotent: safe to run again (CREATE ... IF NOT EXISTS, ADD COLUMN IF NOT EXISTS).
-- Run as a superuser (or the database owner) with: psql -v ON_ERROR_STOP=1 -f 01_nile_schema.sql
-- Ownership is handed to the owner/migration role by 04_roles.sql.

\set ON_ERROR_STOP 1
begin;

-- gen_random_uuid() is built in since PostgreSQL 13: no extension needed.

create table if not exists public.tenants (
    id         uuid primary key default gen_random_uuid(),
    name       text,
    created    timestamptz not null default now(),
    updated    timestamptz not null default now(),
    deleted    timestamptz,
    compute_id uuid,
    status     text not null default 'active'
);
-- Upgrading a tenants table that predates these columns.
alter table public.tenants add column if not exists compute_id uuid;
alter table public.tenants add column if not exists status text not null default 'active';

do $$
begin
    if not exists (select 1 from pg_catalog.pg_constraint
                   where conrelid = 'public.tenants'::regclass and conname = 'tenants_status_check') then
        alter table public.tenants
            add constraint tenants_status_check check (status in ('active', 'suspended'));
    end if;
end
$$;

comment on table public.tenants is
    'Tenants (Nile-compatible). status: active | suspended; the proxy refuses suspended tenants.';

create schema if not exists users;

create table if not exists users.users (
    id             uuid primary key default gen_random_uuid(),
    created        timestamptz not null default now(),
    updated        timestamptz not null default now(),
    deleted        timestamptz,
    name           text,
    family_name    text,
    given_name     text,
    email          text not null,
    picture        text,
    email_verified timestamptz,
    constraint users_email_key unique (email)
);

create table if not exists users.tenant_users (
    tenant_id uuid not null references public.tenants (id) on delete cascade,
    user_id   uuid not null references users.users (id) on delete cascade,
    created   timestamptz not null default now(),
    updated   timestamptz not null default now(),
    deleted   timestamptz,
    roles     text[],
    email     text,
    primary key (tenant_id, user_id)
);
create index if not exists tenant_users_user_id_idx on users.tenant_users (user_id);

commit;
