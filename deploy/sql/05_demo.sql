-- 05_demo.sql: a small demo dataset (optional; not for production databases).
--
-- Two tenants, acme and globex, with fixed ids; a tenant table `todos` created after the
-- event trigger exists (so it is isolated without any extra statement) and a shared
-- table `plans` (no tenant_id: no RLS, readable by every tenant, writable by none).
-- Tables are created as the owner role (SET ROLE), as a migration would.
-- psql variables: owner_role (default app_owner), proxy_role (default tenant_proxy).
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

begin;
set local role :"owner_role";

insert into public.tenants (id, name) values
    ('11111111-1111-4111-8111-111111111111', 'acme'),
    ('22222222-2222-4222-8222-222222222222', 'globex')
on conflict (id) do nothing;

-- Same statement an unchanged Nile app would run: no policy, no grant, no ALTER.
create table if not exists public.todos (
    id        uuid default gen_random_uuid(),
    tenant_id uuid not null references public.tenants (id),
    title     varchar(256),
    complete  boolean default false,
    primary key (tenant_id, id)
);

insert into public.todos (id, tenant_id, title, complete) values
    ('aaaaaaaa-0000-4000-8000-000000000001', '11111111-1111-4111-8111-111111111111', 'acme: ship the proxy', false),
    ('aaaaaaaa-0000-4000-8000-000000000002', '11111111-1111-4111-8111-111111111111', 'acme: write the docs', true),
    ('aaaaaaaa-0000-4000-8000-000000000003', '11111111-1111-4111-8111-111111111111', 'acme: order coyote traps', false),
    ('bbbbbbbb-0000-4000-8000-000000000001', '22222222-2222-4222-8222-222222222222', 'globex: hire a villain', false),
    ('bbbbbbbb-0000-4000-8000-000000000002', '22222222-2222-4222-8222-222222222222', 'globex: buy a volcano', true)
on conflict do nothing;

create table if not exists public.plans (
    id          text primary key,
    name        text not null,
    price_cents integer not null
);
insert into public.plans (id, name, price_cents) values
    ('free', 'Free', 0),
    ('pro', 'Pro', 2900),
    ('enterprise', 'Enterprise', 49900)
on conflict (id) do nothing;
-- A shared table is readable by every tenant; writing it would affect all tenants.
revoke insert, update, delete on public.plans from :"proxy_role";

insert into users.users (id, email, name) values
    ('cccccccc-0000-4000-8000-000000000001', 'wile@acme.example', 'Wile E. Coyote'),
    ('cccccccc-0000-4000-8000-000000000002', 'hank@globex.example', 'Hank Scorpio')
on conflict (id) do nothing;
insert into users.tenant_users (tenant_id, user_id, roles, email) values
    ('11111111-1111-4111-8111-111111111111', 'cccccccc-0000-4000-8000-000000000001', '{admin}', 'wile@acme.example'),
    ('22222222-2222-4222-8222-222222222222', 'cccccccc-0000-4000-8000-000000000002', '{admin}', 'hank@globex.example')
on conflict do nothing;

commit;
