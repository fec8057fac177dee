-- Durable generation jobs: one row per requested book, one row per executed step
-- (and per fan-out item). Users read their own; only the service role claims jobs
-- and writes steps, and every worker write carries the lease token of its claim.

CREATE TABLE public.generation_jobs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  -- The engine may later be redeployed or deleted; the job runs on engine_snapshot.
  engine_id uuid REFERENCES public.ai_engines(id) ON DELETE SET NULL,
  engine_name text NOT NULL,
  engine_snapshot jsonb NOT NULL,
  input jsonb NOT NULL DEFAULT '{}'::jsonb,
  status text NOT NULL DEFAULT 'queued'
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  progress jsonb NOT NULL DEFAULT '{"done": 0, "total": 0}'::jsonb,
  attempt integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 100),
  lease_token uuid,
  lease_owner text,
  lease_expires_at timestamptz,
  cancel_requested boolean NOT NULL DEFAULT false,
  error text,
  errors jsonb NOT NULL DEFAULT '[]'::jsonb,
  result jsonb,
  usage jsonb NOT NULL DEFAULT '{"input_tokens": 0, "output_tokens": 0}'::jsonb,
  scheduled_at timestamptz NOT NULL DEFAULT now(),
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- The claim query reads exactly these two partial indexes.
CREATE INDEX generation_jobs_queued_idx ON public.generation_jobs (scheduled_at) WHERE status = 'queued';
CREATE INDEX generation_jobs_running_lease_idx ON public.generation_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX generation_jobs_user_idx ON public.generation_jobs (user_id, created_at DESC);
CREATE INDEX generation_jobs_engine_idx ON public.generation_jobs (engine_id);

CREATE TABLE public.generation_steps (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  job_id uuid NOT NULL REFERENCES public.generation_jobs(id) ON DELETE CASCADE,
  step_id text NOT NULL,
  -- -1 for a plain step; 0..n-1 for the items of a for_each fan-out.
  item_index integer NOT NULL DEFAULT -1,
  status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
  provider text,
  model text,
  fallback_used boolean NOT NULL DEFAULT false,
  attempts integer NOT NULL DEFAULT 0,
  output jsonb,
  error text,
  usage jsonb NOT NULL DEFAULT '{"input_tokens": 0, "output_tokens": 0}'::jsonb,
  latency_ms integer,
  attempt_log jsonb NOT NULL DEFAULT '[]'::jsonb,
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  UNIQUE (job_id, step_id, item_index)
);

ALTER TABLE public.generation_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.generation_steps ENABLE ROW LEVEL SECURITY;

CREATE POLICY "Users can view their generation jobs" ON public.generation_jobs
  FOR SELECT USING (user_id = auth.uid());
CREATE POLICY "Admins can view all generation jobs" ON public.generation_jobs
  FOR SELECT USING (public.is_engine_admin());
CREATE POLICY "Users can request generation jobs" ON public.generation_jobs
  FOR INSERT WITH CHECK (user_id = auth.uid());
-- Steps are visible exactly when their job is (the subquery runs under the job policies).
CREATE POLICY "Users can view steps of visible jobs" ON public.generation_steps
  FOR SELECT USING (EXISTS (SELECT 1 FROM public.generation_jobs j WHERE j.id = job_id));

REVOKE ALL ON TABLE public.generation_jobs, public.generation_steps FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.generation_jobs, public.generation_steps TO authenticated;
-- A user names only the input and, optionally, the engine; the database fills in the rest.
GRANT INSERT (input, engine_id) ON TABLE public.generation_jobs TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.generation_jobs, public.generation_steps TO service_role;

-- Every insert, whoever makes it and however (rpc, POST /generation_jobs), gets its
-- engine snapshot from ai_engines as the caller sees it, never from the client.
CREATE FUNCTION public.generation_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
DECLARE
  uid uuid := auth.uid();
  engine public.ai_engines;
BEGIN
  IF uid IS NULL AND coalesce(auth.role(), '') <> 'service_role' THEN
    RAISE EXCEPTION 'sign in to request a generation' USING ERRCODE = 'PT401', DETAIL = 'not_authenticated';
  END IF;
  IF uid IS NOT NULL THEN
    NEW.user_id := uid;
  ELSIF NEW.user_id IS NULL THEN
    RAISE EXCEPTION 'user_id is required for a job inserted by the service role'
      USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;

  IF NEW.input IS NULL OR jsonb_typeof(NEW.input) <> 'object' THEN
    RAISE EXCEPTION 'input must be a JSON object' USING ERRCODE = '22023', DETAIL = 'invalid_input';
  END IF;
  IF octet_length(NEW.input::text) > 65536 THEN
    RAISE EXCEPTION 'input is larger than 64 KiB' USING ERRCODE = '22023', DETAIL = 'input_too_large';
  END IF;

  IF uid IS NOT NULL THEN
    IF NEW.engine_id IS NULL THEN
      SELECT c.id INTO NEW.engine_id FROM public.my_engines() c LIMIT 1;
      IF NEW.engine_id IS NULL THEN
        RAISE EXCEPTION 'no engine assigned'
          USING ERRCODE = 'PT404', DETAIL = 'no_engine_assigned',
                HINT = 'Ask an administrator to assign an engine to your tier or to you.';
      END IF;
    ELSIF NOT public.is_engine_admin()
          AND NOT EXISTS (SELECT 1 FROM public.my_engines() c WHERE c.id = NEW.engine_id) THEN
      RAISE EXCEPTION 'engine not found' USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
    END IF;
  END IF;

  -- Read as the caller: RLS on ai_engines has the last word on visibility.
  SELECT * INTO engine FROM public.ai_engines e WHERE e.id = NEW.engine_id AND e.active;
  IF engine.id IS NULL THEN
    RAISE EXCEPTION 'engine not found' USING ERRCODE = 'PT404', DETAIL = 'engine_not_found';
  END IF;

  NEW.id := gen_random_uuid();
  NEW.engine_name := engine.name;
  NEW.engine_snapshot := jsonb_build_object(
    'flow_config', engine.flow_config,
    'models', engine.models,
    'execution_mode', engine.execution_mode,
    'tier', engine.tier,
    'engine_updated_at', engine.updated_at);
  NEW.status := 'queued';
  NEW.progress := '{"done": 0, "total": 0}'::jsonb;
  NEW.attempt := 0;
  NEW.lease_token := NULL;
  NEW.lease_owner := NULL;
  NEW.lease_expires_at := NULL;
  NEW.cancel_requested := false;
  NEW.error := NULL;
  NEW.errors := '[]'::jsonb;
  NEW.result := NULL;
  NEW.usage := '{"input_tokens": 0, "output_tokens": 0}'::jsonb;
  NEW.scheduled_at := now();
  NEW.created_at := now();
  NEW.started_at := NULL;
  NEW.finished_at := NULL;
  NEW.updated_at := now();
  RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.generation_jobs_before_insert() FROM PUBLIC, anon, authenticated, service_role;

CREATE TRIGGER generation_jobs_before_insert BEFORE INSERT ON public.generation_jobs
  FOR EACH ROW EXECUTE FUNCTION public.generation_jobs_before_insert();

-- The React app's entry point (supabase.rpc('request_generation', {input, engine_id})).
CREATE FUNCTION public.request_generation(input jsonb, engine_id uuid DEFAULT NULL)
RETURNS public.generation_jobs
LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
  INSERT INTO public.generation_jobs (input, engine_id)
  VALUES (request_generation.input, request_generation.engine_id)
  RETURNING *
$$;

-- Cancel a queued job at once, or ask its worker to stop a running one. Idempotent.
-- SECURITY DEFINER because users have no UPDATE on jobs; the ownership test is explicit.
CREATE FUNCTION public.cancel_generation(job_id uuid) RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  SELECT * INTO job FROM public.generation_jobs j
   WHERE j.id = cancel_generation.job_id
     AND (j.user_id = auth.uid() OR public.is_engine_admin())
   FOR UPDATE;
  IF job.id IS NULL THEN
    RAISE EXCEPTION 'generation not found' USING ERRCODE = 'PT404', DETAIL = 'generation_not_found';
  END IF;
  IF job.status = 'queued' THEN
    UPDATE public.generation_jobs j
       SET status = 'cancelled', cancel_requested = true, finished_at = now(), updated_at = now()
     WHERE j.id = job.id RETURNING * INTO job;
  ELSIF job.status = 'running' AND NOT job.cancel_requested THEN
    UPDATE public.generation_jobs j
       SET cancel_requested = true, updated_at = now()
     WHERE j.id = job.id RETURNING * INTO job;
  END IF;
  RETURN job;
END
$$;

REVOKE ALL ON FUNCTION public.request_generation(jsonb, uuid), public.cancel_generation(uuid)
  FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.request_generation(jsonb, uuid), public.cancel_generation(uuid)
  TO authenticated;

---------------------------------------------------------------------------------------
-- The queue, for the service role only. Every function after job_claim takes the lease
-- token the claim handed out and refuses (PT409 lease_lost) when it is no longer the
-- job's: a worker whose job was taken over can never complete or overwrite it.
---------------------------------------------------------------------------------------

-- Claim up to max_jobs runnable jobs: queued ones that are due, and running ones whose
-- lease expired (their worker died). Jobs out of attempts, or cancelled while their
-- worker was gone, are finished here instead of being handed out again.
CREATE FUNCTION public.job_claim(worker text, max_jobs integer DEFAULT 1, lease_seconds integer DEFAULT 30)
RETURNS SETOF public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
BEGIN
  UPDATE public.generation_jobs j
     SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'failed' END,
         error = CASE WHEN j.cancel_requested THEN j.error
                      ELSE 'worker lost the job after its last attempt (' || j.attempt || ' of ' || j.max_attempts || ')' END,
         errors = CASE WHEN j.cancel_requested THEN j.errors
                       ELSE j.errors || jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', 'lease expired') END,
         lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
         finished_at = now(), updated_at = now()
   WHERE j.id IN (SELECT x.id FROM public.generation_jobs x
                   WHERE x.status = 'running' AND x.lease_expires_at < now()
                     AND (x.attempt >= x.max_attempts OR x.cancel_requested)
                   FOR UPDATE SKIP LOCKED);

  RETURN QUERY
  UPDATE public.generation_jobs j
     SET status = 'running',
         attempt = j.attempt + 1,
         lease_token = gen_random_uuid(),
         lease_owner = job_claim.worker,
         lease_expires_at = now() + make_interval(secs => greatest(job_claim.lease_seconds, 1)),
         errors = CASE WHEN j.status = 'running'
                       THEN j.errors || jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', 'lease expired')
                       ELSE j.errors END,
         started_at = coalesce(j.started_at, now()),
         updated_at = now()
    FROM (SELECT x.id FROM public.generation_jobs x
           WHERE ((x.status = 'queued' AND x.scheduled_at <= now())
               OR (x.status = 'running' AND x.lease_expires_at < now()))
             AND x.attempt < x.max_attempts
             AND NOT x.cancel_requested
           ORDER BY x.scheduled_at
           LIMIT greatest(job_claim.max_jobs, 0)
           FOR UPDATE SKIP LOCKED) c
   WHERE j.id = c.id
  RETURNING j.*;
END
$$;

-- Lock the job row and check the caller still holds its lease.
CREATE FUNCTION public.job_lease_check(job_id uuid, lease_token uuid) RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  SELECT * INTO job FROM public.generation_jobs j WHERE j.id = job_lease_check.job_id FOR UPDATE;
  IF job.id IS NULL OR job.status <> 'running' OR job.lease_token IS DISTINCT FROM job_lease_check.lease_token THEN
    RAISE EXCEPTION 'lease lost: job % is no longer held by this worker', job_lease_check.job_id
      USING ERRCODE = 'PT409', DETAIL = 'lease_lost';
  END IF;
  RETURN job;
END
$$;

-- Extend the lease. Returns the job so the worker sees cancel_requested.
CREATE FUNCTION public.job_heartbeat(job_id uuid, lease_token uuid, lease_seconds integer DEFAULT 30)
RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  PERFORM public.job_lease_check(job_heartbeat.job_id, job_heartbeat.lease_token);
  UPDATE public.generation_jobs j
     SET lease_expires_at = now() + make_interval(secs => greatest(job_heartbeat.lease_seconds, 1))
   WHERE j.id = job_heartbeat.job_id
  RETURNING * INTO job;
  RETURN job;
END
$$;

-- Record a step (or fan-out item) and the job's progress. A succeeded step is written
-- once: a later write for it changes nothing and returns the stored row, so resumed or
-- duplicated work never overwrites a finished output.
CREATE FUNCTION public.step_save(job_id uuid, lease_token uuid, step jsonb, progress jsonb DEFAULT NULL)
RETURNS public.generation_steps
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  saved public.generation_steps;
BEGIN
  PERFORM public.job_lease_check(step_save.job_id, step_save.lease_token);
  INSERT INTO public.generation_steps AS s
    (job_id, step_id, item_index, status, provider, model, fallback_used, attempts, output, error,
     usage, latency_ms, attempt_log, started_at, finished_at)
  VALUES (
    step_save.job_id,
    step ->> 'step_id',
    coalesce((step ->> 'item_index')::integer, -1),
    coalesce(step ->> 'status', 'running'),
    step ->> 'provider',
    step ->> 'model',
    coalesce((step ->> 'fallback_used')::boolean, false),
    coalesce((step ->> 'attempts')::integer, 0),
    step -> 'output',
    step ->> 'error',
    coalesce(step -> 'usage', '{"input_tokens": 0, "output_tokens": 0}'::jsonb),
    (step ->> 'latency_ms')::integer,
    coalesce(step -> 'attempt_log', '[]'::jsonb),
    now(),
    CASE WHEN coalesce(step ->> 'status', 'running') = 'running' THEN NULL ELSE now() END)
  ON CONFLICT (job_id, step_id, item_index) DO UPDATE
    SET status = EXCLUDED.status, provider = EXCLUDED.provider, model = EXCLUDED.model,
        fallback_used = EXCLUDED.fallback_used, attempts = EXCLUDED.attempts,
        output = EXCLUDED.output, error = EXCLUDED.error, usage = EXCLUDED.usage,
        latency_ms = EXCLUDED.latency_ms, attempt_log = EXCLUDED.attempt_log,
        started_at = CASE WHEN EXCLUDED.status = 'running' THEN now() ELSE s.started_at END,
        finished_at = EXCLUDED.finished_at
    WHERE s.status <> 'succeeded'
  RETURNING * INTO saved;
  IF saved.id IS NULL THEN
    SELECT * INTO saved FROM public.generation_steps s
     WHERE s.job_id = step_save.job_id AND s.step_id = step ->> 'step_id'
       AND s.item_index = coalesce((step ->> 'item_index')::integer, -1);
  END IF;
  IF step_save.progress IS NOT NULL THEN
    UPDATE public.generation_jobs j SET progress = step_save.progress, updated_at = now()
     WHERE j.id = step_save.job_id;
  END IF;
  RETURN saved;
END
$$;

-- Finish a job successfully. Token usage is summed from the steps, so work done by
-- earlier attempts is counted once and never lost.
CREATE FUNCTION public.job_complete(job_id uuid, lease_token uuid, result jsonb, progress jsonb DEFAULT NULL)
RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  PERFORM public.job_lease_check(job_complete.job_id, job_complete.lease_token);
  UPDATE public.generation_jobs j
     SET status = 'succeeded',
         result = job_complete.result,
         progress = coalesce(job_complete.progress, j.progress),
         usage = (SELECT jsonb_build_object(
                    'input_tokens', coalesce(sum((s.usage ->> 'input_tokens')::bigint), 0),
                    'output_tokens', coalesce(sum((s.usage ->> 'output_tokens')::bigint), 0))
                  FROM public.generation_steps s WHERE s.job_id = j.id),
         error = NULL,
         lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
         finished_at = now(), updated_at = now()
   WHERE j.id = job_complete.job_id
  RETURNING * INTO job;
  RETURN job;
END
$$;

-- Give up on this attempt. A retryable failure goes back to the queue after retry_in
-- seconds while attempts remain; otherwise, or when it is not retryable, the job fails.
CREATE FUNCTION public.job_fail(job_id uuid, lease_token uuid, error text,
                                retryable boolean DEFAULT false, retry_in_seconds integer DEFAULT 5)
RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  job := public.job_lease_check(job_fail.job_id, job_fail.lease_token);
  UPDATE public.generation_jobs j
     SET status = CASE WHEN job_fail.retryable AND j.attempt < j.max_attempts AND NOT j.cancel_requested
                       THEN 'queued' ELSE 'failed' END,
         scheduled_at = now() + make_interval(secs => greatest(job_fail.retry_in_seconds, 0)),
         error = job_fail.error,
         errors = j.errors || jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', job_fail.error),
         lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
         finished_at = CASE WHEN job_fail.retryable AND j.attempt < j.max_attempts AND NOT j.cancel_requested
                            THEN NULL ELSE now() END,
         usage = (SELECT jsonb_build_object(
                    'input_tokens', coalesce(sum((s.usage ->> 'input_tokens')::bigint), 0),
                    'output_tokens', coalesce(sum((s.usage ->> 'output_tokens')::bigint), 0))
                  FROM public.generation_steps s WHERE s.job_id = j.id),
         updated_at = now()
   WHERE j.id = job_fail.job_id
  RETURNING * INTO job;
  RETURN job;
END
$$;

-- Acknowledge a cancellation the worker has acted on.
CREATE FUNCTION public.job_cancelled(job_id uuid, lease_token uuid) RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  PERFORM public.job_lease_check(job_cancelled.job_id, job_cancelled.lease_token);
  UPDATE public.generation_jobs j
     SET status = 'cancelled', lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
         finished_at = now(), updated_at = now()
   WHERE j.id = job_cancelled.job_id
  RETURNING * INTO job;
  RETURN job;
END
$$;

REVOKE ALL ON FUNCTION
  public.job_claim(text, integer, integer),
  public.job_lease_check(uuid, uuid),
  public.job_heartbeat(uuid, uuid, integer),
  public.step_save(uuid, uuid, jsonb, jsonb),
  public.job_complete(uuid, uuid, jsonb, jsonb),
  public.job_fail(uuid, uuid, text, boolean, integer),
  public.job_cancelled(uuid, uuid)
FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION
  public.job_claim(text, integer, integer),
  public.job_heartbeat(uuid, uuid, integer),
  public.step_save(uuid, uuid, jsonb, jsonb),
  public.job_complete(uuid, uuid, jsonb, jsonb),
  public.job_fail(uuid, uuid, text, boolean, integer),
  public.job_cancelled(uuid, uuid)
TO service_role;
GRANT EXECUTE ON FUNCTION public.job_lease_check(uuid, uuid) TO service_role;
