-- Isolation in the queue (issue #13): one user's input, one user's scan or one
-- crashing job must not cost anyone else. V1-V7 stay as applied; this file adds
-- admission limits, a budget for lost leases apart from real errors, and policies
-- whose tests an index can serve.

---------------------------------------------------------------------------------------
-- 1. Admission: inputs the worker (and every reader) can decode.
---------------------------------------------------------------------------------------
-- The crash budget's columns (section 2) come first: admission resets them.
ALTER TABLE public.generation_jobs
  ADD COLUMN lease_losses integer NOT NULL DEFAULT 0,
  ADD COLUMN max_lease_losses integer NOT NULL DEFAULT 20 CHECK (max_lease_losses BETWEEN 1 AND 1000),
  ADD COLUMN lease_losses_in_a_row integer NOT NULL DEFAULT 0,
  ADD COLUMN claimed_at timestamptz;

-- serde_json, like most JSON decoders, stops at 128 levels of nesting; a job whose
-- input is deeper cannot be read back, and before this check one such input made the
-- worker drop the whole claimed batch. The limits are far above what a book request
-- needs and are documented in the README:
--   size    <= 64 KiB as JSON text (input_too_large, as before);
--   depth   <= 32: no value more than 32 objects/arrays below the top (input_too_deep);
--   width   <= 1,000 members per object and elements per array (input_too_wide);
--   numbers within +-1e308 (what a 64-bit float holds; invalid_input).
-- Strings cannot hold \u0000 (jsonb refuses it) and lone surrogates are refused by
-- Postgres's JSON parser, before this trigger runs.
-- A separate trigger named to fire first (triggers fire in name order): it refuses
-- before generation_jobs_before_insert resolves an engine or the limits count jobs.
-- Each test is a jsonpath walk bounded by the 64 KiB checked first; the depth test
-- descends at most 33 levels and stops at the first hit.
CREATE FUNCTION public.generation_jobs_admission() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
BEGIN
  IF NEW.input IS NULL OR jsonb_typeof(NEW.input) <> 'object' THEN
    RAISE EXCEPTION 'input must be a JSON object' USING ERRCODE = '22023', DETAIL = 'invalid_input';
  END IF;
  IF octet_length(NEW.input::text) > 65536 THEN
    RAISE EXCEPTION 'input is larger than 64 KiB' USING ERRCODE = '22023', DETAIL = 'input_too_large';
  END IF;
  IF jsonb_path_exists(NEW.input, 'strict $.**{33}') THEN
    RAISE EXCEPTION 'input is nested more than 32 levels deep'
      USING ERRCODE = '22023', DETAIL = 'input_too_deep',
            HINT = 'At most 32 levels of objects and arrays.';
  END IF;
  IF jsonb_path_exists(NEW.input, 'strict $.** ? (@.type() == "array" && @.size() > 1000)')
     OR EXISTS (SELECT 1
                  FROM jsonb_path_query(NEW.input, 'strict $.** ? (@.type() == "object")') o(v)
                 WHERE (SELECT count(*) FROM jsonb_object_keys(o.v)) > 1000) THEN
    RAISE EXCEPTION 'input has an object or array with more than 1000 members'
      USING ERRCODE = '22023', DETAIL = 'input_too_wide',
            HINT = 'At most 1000 keys per object and 1000 elements per array.';
  END IF;
  IF jsonb_path_exists(NEW.input, 'strict $.** ? (@.type() == "number" && (@ > 1e308 || @ < -1e308))') THEN
    RAISE EXCEPTION 'input holds a number beyond +-1e308' USING ERRCODE = '22023', DETAIL = 'invalid_input';
  END IF;
  -- Every job starts with a clean crash budget (section 2), whoever inserts it.
  NEW.lease_losses := 0;
  NEW.lease_losses_in_a_row := 0;
  NEW.claimed_at := NULL;
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.generation_jobs_admission() FROM PUBLIC, anon, authenticated, service_role;

-- For every inserter, the service role included (its inserts are read by the same worker).
CREATE TRIGGER generation_jobs_admission BEFORE INSERT ON public.generation_jobs
  FOR EACH ROW EXECUTE FUNCTION public.generation_jobs_admission();

---------------------------------------------------------------------------------------
-- 2. Crashes are not the job's fault.
---------------------------------------------------------------------------------------
-- Before: a lost lease (the worker died) cost an attempt exactly like a real error,
-- and the rescued job was claimed again first (oldest scheduled_at), so under repeated
-- crashes the same few jobs absorbed every kill and failed after five.
-- Now:
--  * attempt / max_attempts count real errors (job_fail) only: a lost lease gives its
--    attempt back and draws on lease_losses / max_lease_losses instead (20 by default);
--  * a poison guard: a job that loses its lease lease_losses_in_a_row times in a row
--    without finishing a single step in between (5 at most) is stopped: it is likely
--    what kills its workers;
--  * a rescued job goes back to the queue with a jittered delay, after the fresh work
--    already due, instead of being handed out again at once.

-- The claim. First every running job whose lease expired is released: cancelled if
-- asked, failed when out of crash budget or poisoned, otherwise requeued after a
-- jittered delay that grows with its losses in a row (0.5-1.5 s, 1-3 s, 2-6 s, …,
-- at most 45 s) with its attempt given back. Then due queued jobs are claimed in
-- scheduled_at order: one partial index (generation_jobs_queued_idx) serves it, and
-- the release touches only expired rows (generation_jobs_running_lease_idx).
-- "Made progress" = a step of the job finished after the lost claim began; the
-- steps' unique index (job_id, …) answers it for the few rows released.
CREATE OR REPLACE FUNCTION public.job_claim(worker text, max_jobs integer DEFAULT 1, lease_seconds integer DEFAULT 30)
RETURNS SETOF public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
BEGIN
  WITH lost AS (
    SELECT x.id,
           x.lease_losses + 1 AS losses,
           CASE WHEN EXISTS (SELECT 1 FROM public.generation_steps s
                              WHERE s.job_id = x.id AND s.status = 'succeeded'
                                AND s.finished_at >= x.claimed_at)
                THEN 1 ELSE x.lease_losses_in_a_row + 1 END AS in_a_row
      FROM public.generation_jobs x
     WHERE x.status = 'running' AND x.lease_expires_at < now()
     FOR UPDATE SKIP LOCKED
  )
  UPDATE public.generation_jobs j
     SET status = CASE WHEN j.cancel_requested THEN 'cancelled'
                       WHEN l.losses >= j.max_lease_losses OR l.in_a_row >= 5 THEN 'failed'
                       ELSE 'queued' END,
         error = CASE WHEN j.cancel_requested THEN j.error
                      WHEN l.in_a_row >= 5 THEN
                        'stopped: its worker was lost ' || l.in_a_row || ' times in a row without finishing a step'
                        || ' (the job may be what crashes the workers)'
                      WHEN l.losses >= j.max_lease_losses THEN
                        'stopped: its worker was lost ' || l.losses || ' times (at most ' || j.max_lease_losses || ')'
                      ELSE j.error END,
         errors = j.errors || jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', 'lease expired',
                                                 'lease_losses', l.losses),
         attempt = CASE WHEN j.cancel_requested THEN j.attempt ELSE greatest(j.attempt - 1, 0) END,
         lease_losses = l.losses,
         lease_losses_in_a_row = l.in_a_row,
         scheduled_at = now() + make_interval(secs => (0.5 + random()) * least(power(2, l.in_a_row - 1), 30)),
         lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
         finished_at = CASE WHEN j.cancel_requested OR l.losses >= j.max_lease_losses OR l.in_a_row >= 5
                            THEN now() END,
         updated_at = now()
    FROM lost l
   WHERE j.id = l.id;

  RETURN QUERY
  UPDATE public.generation_jobs j
     SET status = 'running',
         attempt = j.attempt + 1,
         lease_token = gen_random_uuid(),
         lease_owner = job_claim.worker,
         lease_expires_at = now() + make_interval(secs => greatest(job_claim.lease_seconds, 1)),
         claimed_at = now(),
         started_at = coalesce(j.started_at, now()),
         updated_at = now()
    FROM (SELECT x.id FROM public.generation_jobs x
           WHERE x.status = 'queued' AND x.scheduled_at <= now()
             AND x.attempt < x.max_attempts
             AND NOT x.cancel_requested
           ORDER BY x.scheduled_at
           LIMIT greatest(job_claim.max_jobs, 0)
           FOR UPDATE SKIP LOCKED) c
   WHERE j.id = c.id
  RETURNING j.*;
END
$$;

---------------------------------------------------------------------------------------
-- 3. Scans: policies an index can serve.
---------------------------------------------------------------------------------------
-- V3's policies were `user_id = auth.uid()` and, OR-ed with it, `is_engine_admin()`.
-- Both were evaluated per row (auth.uid() is not leakproof; is_engine_admin() has
-- SET search_path, so it is not inlined), and even in the (select …) form the OR
-- defeats the (user_id, created_at) index: with two permissive policies the filter is
-- `user_id = $1 OR $2`, no index condition can express the second arm, so a user's
-- plain `GET /generation_jobs?order=created_at.desc&limit=50` scanned every job
-- (benches/README.md, section "scans": measured both ways at 1,000,000 jobs).
-- Alternatives measured or weighed:
--  * one policy `user_id = ANY((select visible_job_owners()))`: fine for a user, but an
--    admin's array is every owner, and Postgres 15 cannot walk an index in created_at
--    order across an array: the admin's list would read and sort every job;
--  * a range `user_id BETWEEN lo AND hi` (lo = hi = uid for a user, the whole uuid
--    range for an admin): not an equality, so the index cannot give created_at order
--    and the planner must guess the range's width.
-- Chosen: owner-only policies (one equality on the leading index column: the index
-- returns a user's newest jobs first and the LIMIT stops the scan), and admins read
-- every job through SECURITY DEFINER functions the API uses (generation_list,
-- generation_get, generation_steps_of below), each with an explicit caller test.
-- The cost: an admin reading generation_jobs straight through PostgREST now sees only
-- their own jobs; the service's API and the admin page show them every job.
-- The complete set of policies of these two tables (the service's own, not the
-- specification's) is defined here: whatever an earlier migration named them, they go.
DO $drop$
DECLARE p record;
BEGIN
  FOR p IN SELECT policyname, tablename FROM pg_catalog.pg_policies
            WHERE schemaname = 'public' AND tablename IN ('generation_jobs', 'generation_steps') LOOP
    EXECUTE format('DROP POLICY %I ON public.%I', p.policyname, p.tablename);
  END LOOP;
END
$drop$;

CREATE POLICY "Users can view their generation jobs" ON public.generation_jobs
  FOR SELECT USING (user_id = (select auth.uid()));
CREATE POLICY "Users can request generation jobs" ON public.generation_jobs
  FOR INSERT WITH CHECK (user_id = (select auth.uid()));
-- The caller's job ids once (an init plan over the (user_id, created_at) index), then
-- an index condition on the steps' (job_id, …) key: a user's step reads cost in
-- proportion to their own jobs, never to the table.
CREATE POLICY "Users can view steps of their jobs" ON public.generation_steps
  FOR SELECT USING (job_id = ANY (ARRAY(
    SELECT j.id FROM public.generation_jobs j WHERE j.user_id = (select auth.uid()))));

-- An admin's list walks this index newest first; users' lists use generation_jobs_user_idx.
CREATE INDEX generation_jobs_created_idx ON public.generation_jobs (created_at DESC);

-- The caller's jobs, newest first; every job for an admin. The two branches are two
-- statements, so each is planned on its own index.
CREATE FUNCTION public.generation_list(max_rows integer DEFAULT 50, only_status text DEFAULT NULL)
RETURNS SETOF public.generation_jobs
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  uid uuid := auth.uid();
  n integer := least(greatest(coalesce(max_rows, 50), 1), 500);
BEGIN
  IF uid IS NULL THEN
    RETURN;
  END IF;
  IF public.is_engine_admin() THEN
    IF only_status IS NULL THEN
      RETURN QUERY SELECT * FROM public.generation_jobs j ORDER BY j.created_at DESC LIMIT n;
    ELSE
      RETURN QUERY SELECT * FROM public.generation_jobs j WHERE j.status = only_status
                    ORDER BY j.created_at DESC LIMIT n;
    END IF;
  ELSIF only_status IS NULL THEN
    RETURN QUERY SELECT * FROM public.generation_jobs j WHERE j.user_id = uid
                  ORDER BY j.created_at DESC LIMIT n;
  ELSE
    RETURN QUERY SELECT * FROM public.generation_jobs j WHERE j.user_id = uid AND j.status = only_status
                  ORDER BY j.created_at DESC LIMIT n;
  END IF;
END
$$;

-- One job, if it is the caller's or the caller is an admin (a primary-key lookup).
CREATE FUNCTION public.generation_get(job_id uuid) RETURNS SETOF public.generation_jobs
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT j.* FROM public.generation_jobs j
   WHERE j.id = generation_get.job_id
     AND auth.uid() IS NOT NULL
     AND (j.user_id = auth.uid() OR public.is_engine_admin())
$$;

-- The steps of one job visible to the caller, in execution order.
CREATE FUNCTION public.generation_steps_of(job_id uuid) RETURNS SETOF public.generation_steps
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT s.* FROM public.generation_steps s
   WHERE s.job_id = generation_steps_of.job_id
     AND EXISTS (SELECT 1 FROM public.generation_get(generation_steps_of.job_id))
   ORDER BY s.started_at, s.item_index
$$;

REVOKE ALL ON FUNCTION public.generation_list(integer, text), public.generation_get(uuid),
  public.generation_steps_of(uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.generation_list(integer, text), public.generation_get(uuid),
  public.generation_steps_of(uuid) TO authenticated;
