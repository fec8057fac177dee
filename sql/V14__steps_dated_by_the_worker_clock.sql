-- step_save dated by the worker's clock (issue #14 follow-up).
--
-- V13 dated a finished call from `age_ms`, how long before the database's now() it
-- ended. That is exact but for the time between the worker measuring the age and the
-- statement's transaction starting, and that time differs from one write to the next:
-- under load it was larger than a fast call's whole latency, so a fan-out's items
-- could be dated before the outline they were made from, and the timeline (ordered
-- by started_at) listed chapters first (seen twice in a loaded test run). The worker
-- now sends `ended_at` from its own clock: every call of a job is dated by one clock,
-- so their order is the order they ran. The database bounds it (not after now(), not
-- more than an hour back), and keeps `age_ms` for workers that send only that.

CREATE OR REPLACE FUNCTION public.step_save(job_id uuid, lease_token uuid, step jsonb, progress jsonb DEFAULT NULL)
RETURNS public.generation_steps
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  saved public.generation_steps;
  step_status text := coalesce(step ->> 'status', 'running');
  -- When the call ended: the worker's own `ended_at` (its clock dates every call of
  -- the job alike), bounded to the last hour and never after now(); else `age_ms`
  -- before now (V13's workers); else now().
  ended timestamptz := least(now(), greatest(now() - interval '1 hour', coalesce(
      (step ->> 'ended_at')::timestamptz,
      now() - make_interval(secs => least(greatest(
        coalesce((step ->> 'age_ms')::double precision, 0), 0), 3600000) / 1000.0))));
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
         THEN ended - make_interval(secs => coalesce((step ->> 'latency_ms')::double precision, 0) / 1000.0)
         ELSE now() END,
    CASE WHEN step_status = 'running' THEN NULL ELSE ended END)
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
