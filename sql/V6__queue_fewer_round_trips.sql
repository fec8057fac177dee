-- Fewer and shorter round trips on the worker's hot path (benches/README.md, queue
-- and orchestration): a fan-out's items no longer queue behind one another on the job
-- row, and the last step's record travels with the job's completion.
-- V3 stays as applied; the functions below replace its versions.

-- step_save, as in V3, with two changes:
-- 1. The lease is checked under FOR KEY SHARE instead of FOR UPDATE. It still fences:
--    job_claim takes rows FOR UPDATE SKIP LOCKED, so no takeover can commit while a
--    step is being written, and a takeover that committed first changes lease_token,
--    which the re-checked WHERE sees. But concurrent item writes no longer wait for
--    each other, nor the heartbeat for them (job_lease_check, below, now locks FOR NO
--    KEY UPDATE, which KEY SHARE does not block). A user's cancel (cancel_generation,
--    FOR UPDATE) may wait for the step writes in flight: milliseconds.
-- 2. progress is advisory: it is written only when no other write holds the job row
--    (SKIP LOCKED) and never moves backwards; the next step and job_complete bring it up
--    to date. A finished call's started_at is derived from its latency, because its
--    `running` row may never have been written (the worker marks only slow calls).
CREATE OR REPLACE FUNCTION public.step_save(job_id uuid, lease_token uuid, step jsonb, progress jsonb DEFAULT NULL)
RETURNS public.generation_steps
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  saved public.generation_steps;
  step_status text := coalesce(step ->> 'status', 'running');
BEGIN
  PERFORM 1 FROM public.generation_jobs j
   WHERE j.id = step_save.job_id AND j.status = 'running' AND j.lease_token = step_save.lease_token
   FOR KEY SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'lease lost: job % is no longer held by this worker', step_save.job_id
      USING ERRCODE = 'PT409', DETAIL = 'lease_lost';
  END IF;
  INSERT INTO public.generation_steps AS s
    (job_id, step_id, item_index, status, provider, model, fallback_used, attempts, output, error,
     usage, latency_ms, attempt_log, started_at, finished_at)
  VALUES (
    step_save.job_id,
    step ->> 'step_id',
    coalesce((step ->> 'item_index')::integer, -1),
    step_status,
    step ->> 'provider',
    step ->> 'model',
    coalesce((step ->> 'fallback_used')::boolean, false),
    coalesce((step ->> 'attempts')::integer, 0),
    step -> 'output',
    step ->> 'error',
    coalesce(step -> 'usage', '{"input_tokens": 0, "output_tokens": 0}'::jsonb),
    (step ->> 'latency_ms')::integer,
    coalesce(step -> 'attempt_log', '[]'::jsonb),
    CASE WHEN step_status <> 'running' AND step ? 'latency_ms'
         THEN now() - make_interval(secs => coalesce((step ->> 'latency_ms')::double precision, 0) / 1000.0)
         ELSE now() END,
    CASE WHEN step_status = 'running' THEN NULL ELSE now() END)
  ON CONFLICT (job_id, step_id, item_index) DO UPDATE
    SET status = EXCLUDED.status, provider = EXCLUDED.provider, model = EXCLUDED.model,
        fallback_used = EXCLUDED.fallback_used, attempts = EXCLUDED.attempts,
        output = EXCLUDED.output, error = EXCLUDED.error, usage = EXCLUDED.usage,
        latency_ms = EXCLUDED.latency_ms, attempt_log = EXCLUDED.attempt_log,
        -- A finished call knows its own start (now() - latency); a row left `running` by
        -- an earlier attempt must not stretch it. Summary rows (no latency) keep theirs.
        started_at = CASE WHEN EXCLUDED.status = 'running' OR s.status <> 'running'
                            OR step_save.step ? 'latency_ms'
                          THEN EXCLUDED.started_at ELSE s.started_at END,
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
     WHERE j.id = (SELECT x.id FROM public.generation_jobs x WHERE x.id = step_save.job_id
                   FOR NO KEY UPDATE SKIP LOCKED)
       AND coalesce((j.progress ->> 'done')::bigint, -1) <= coalesce((step_save.progress ->> 'done')::bigint, 0);
  END IF;
  RETURN saved;
END
$$;

-- job_lease_check, as in V3, locking FOR NO KEY UPDATE instead of FOR UPDATE: it still
-- excludes a takeover (job_claim's FOR UPDATE) for the caller's transaction, and it no
-- longer queues the heartbeat, job_complete or job_fail behind step writes (KEY SHARE).
CREATE OR REPLACE FUNCTION public.job_lease_check(job_id uuid, lease_token uuid) RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  SELECT * INTO job FROM public.generation_jobs j WHERE j.id = job_lease_check.job_id FOR NO KEY UPDATE;
  IF job.id IS NULL OR job.status <> 'running' OR job.lease_token IS DISTINCT FROM job_lease_check.lease_token THEN
    RAISE EXCEPTION 'lease lost: job % is no longer held by this worker', job_lease_check.job_id
      USING ERRCODE = 'PT409', DETAIL = 'lease_lost';
  END IF;
  RETURN job;
END
$$;

-- job_complete, as in V3, also saving the steps the worker held back (the last step's
-- record): one round trip instead of two. Deploy order: migrate before starting
-- workers of this version (their completions name `steps`, which V3's function lacks). The steps are saved under the same lease
-- check and in the same transaction, so either the job succeeds with them or nothing
-- is written and the retry runs them again.
DROP FUNCTION public.job_complete(uuid, uuid, jsonb, jsonb);
CREATE FUNCTION public.job_complete(job_id uuid, lease_token uuid, result jsonb,
                                    progress jsonb DEFAULT NULL, steps jsonb DEFAULT NULL)
RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  PERFORM public.job_lease_check(job_complete.job_id, job_complete.lease_token);
  PERFORM public.step_save(job_complete.job_id, job_complete.lease_token, s.value, NULL)
     FROM jsonb_array_elements(coalesce(job_complete.steps, '[]'::jsonb)) s;
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

REVOKE ALL ON FUNCTION public.job_complete(uuid, uuid, jsonb, jsonb, jsonb)
  FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.job_complete(uuid, uuid, jsonb, jsonb, jsonb) TO service_role;
