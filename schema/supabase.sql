-- Tables the worker uses in Supabase (SUPABASE_URL set). Apply once, e.g. in the SQL
-- editor or with `psql "$DATABASE_URL" -f schema/supabase.sql`; it is idempotent.
--
-- The worker reaches these tables through Supabase's REST API (PostgREST) with the
-- service-role key, which bypasses row level security. RLS is enabled with no policy,
-- so the anon and authenticated roles (browsers, the public API key) can read nothing.

create table if not exists public.organizations (
  id text primary key,
  name text,
  -- 'v1:' + base64(nonce | ciphertext | tag), from `worker encrypt-key --org-id <id>`;
  -- null: the organization's jobs use OPENROUTER_API_KEY.
  llm_api_key_encrypted text,
  -- the model of the organization's jobs when a job names none; null: OPENROUTER_MODEL.
  llm_model text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table if not exists public.agent_jobs (
  id text primary key,  -- the job_id of the message payloads
  -- No foreign key to organizations: recording a job's status must never fail, or be
  -- retried, because an organization row is missing or was deleted.
  organization_id text not null,
  status text not null check (status in ('queued', 'running', 'completed', 'failed')),
  detail text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- job.status_update upserts on the primary key: POST /rest/v1/agent_jobs?on_conflict=id
-- with `Prefer: resolution=merge-duplicates` (INSERT ... ON CONFLICT (id) DO UPDATE).
-- created_at keeps its first value; status, detail and updated_at take the latest.

create index if not exists agent_jobs_organization_updated
  on public.agent_jobs (organization_id, updated_at desc);
create index if not exists agent_jobs_status_updated
  on public.agent_jobs (status, updated_at desc);

alter table public.organizations enable row level security;
alter table public.agent_jobs enable row level security;
