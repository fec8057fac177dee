-- job_complete also stores the job's last streamed deltas (issue #14): the worker hands
-- the rows its delta writer had not flushed yet to job_complete instead of flushing them
-- first, so finishing a streamed job costs the one round trip it cost before streaming
-- (the flush before completion doubled the end of a one-step job's run: benches/README
-- section 7, the 1-worker queue).
-- The rows are inserted in the same transaction as the steps and the status: a reader
-- sees the last text, the step records and `succeeded` together, so the reassembly rule
-- of V11 holds ("when the step finishes, the text equals its output"). A retried
-- job_complete is idempotent for them (ON CONFLICT DO NOTHING). Every row must belong
-- to the job being completed. Older workers, which do not name `deltas`, get the
-- default: nothing to insert.
-- No NOTIFY here (delta_append sends one per flush): a transaction that notifies holds
-- a database-wide lock from its pre-commit to the end of its commit, WAL flush
-- included, and every job's completion would take it. (At the queue benchmark's scale
-- it made no measurable difference; it is kept off the completion path on principle.)
-- LISTENing readers learn of the end, and read the last rows, at their next status read.

-- Rows of one job whose lease the caller holds (job_complete has locked the job row),
-- with the same checks and bounds as delta_append, without its NOTIFY.
CREATE FUNCTION public.delta_store(p_job_id uuid, p_lease uuid, p_rows jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  n bigint;
BEGIN
  IF p_rows IS NULL OR jsonb_typeof(p_rows) <> 'array' THEN
    RAISE EXCEPTION 'deltas must be a JSON array' USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;
  IF jsonb_array_length(p_rows) > 5000 THEN
    RAISE EXCEPTION 'at most 5000 rows per call' USING ERRCODE = '22023', DETAIL = 'too_many_deltas';
  END IF;
  IF octet_length(p_rows::text) > 4194304 THEN
    RAISE EXCEPTION 'at most 4 MiB per call' USING ERRCODE = '22023', DETAIL = 'deltas_too_large';
  END IF;
  IF EXISTS (SELECT 1 FROM jsonb_to_recordset(p_rows) AS r(job_id uuid, lease uuid, seq bigint,
               step_id text, kind text, attempt integer, run integer)
              WHERE r.job_id IS DISTINCT FROM p_job_id OR r.lease IS DISTINCT FROM p_lease
                 OR r.seq IS NULL OR r.step_id IS NULL OR r.kind IS NULL OR r.attempt IS NULL
                 OR r.run IS NULL) THEN
    RAISE EXCEPTION 'every row needs seq, step_id, kind, attempt and run, and must belong to the job being completed'
      USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM public.generation_jobs x
                  WHERE x.id = p_job_id AND x.status = 'running' AND x.lease_token = p_lease) THEN
    RAISE EXCEPTION 'lease lost: job % is no longer held by this worker', p_job_id
      USING ERRCODE = 'PT409', DETAIL = 'lease_lost';
  END IF;
  INSERT INTO public.generation_deltas (job_id, seq, step_id, item_index, kind, attempt, run, text, meta)
  SELECT p_job_id, r.seq, r.step_id, coalesce(r.item_index, -1), r.kind, r.attempt, r.run,
         coalesce(r.text, ''), r.meta
    FROM jsonb_to_recordset(p_rows) AS r(seq bigint, step_id text, item_index integer,
         kind text, attempt integer, run integer, text text, meta jsonb)
  ON CONFLICT (job_id, seq) DO NOTHING;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;

REVOKE ALL ON FUNCTION public.delta_store(uuid, uuid, jsonb) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.delta_store(uuid, uuid, jsonb) TO service_role;

DROP FUNCTION public.job_complete(uuid, uuid, jsonb, jsonb, jsonb);
CREATE FUNCTION public.job_complete(job_id uuid, lease_token uuid, result jsonb,
                                    progress jsonb DEFAULT NULL, steps jsonb DEFAULT NULL,
                                    deltas jsonb DEFAULT NULL)
RETURNS public.generation_jobs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  job public.generation_jobs;
BEGIN
  PERFORM public.job_lease_check(job_complete.job_id, job_complete.lease_token);
  IF job_complete.deltas IS NOT NULL AND job_complete.deltas <> '[]'::jsonb THEN
    PERFORM public.delta_store(job_complete.job_id, job_complete.lease_token, job_complete.deltas);
  END IF;
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

REVOKE ALL ON FUNCTION public.job_complete(uuid, uuid, jsonb, jsonb, jsonb, jsonb)
  FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.job_complete(uuid, uuid, jsonb, jsonb, jsonb, jsonb) TO service_role;

-- step_save, as in V6, dating a finished call from its end: the worker sends `age_ms`,
-- how long ago the call ended when the record is sent. V6 took now() as the end, but a
-- record can wait in the worker's write-behind queue (behind its streamed text's
-- flush), so a step could be dated after the steps that ran after it (seen: an outline
-- listed after its chapters). Without `age_ms` (older workers) it is V6's behaviour.
CREATE OR REPLACE FUNCTION public.step_save(job_id uuid, lease_token uuid, step jsonb, progress jsonb DEFAULT NULL)
RETURNS public.generation_steps
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $$
#variable_conflict use_column
DECLARE
  saved public.generation_steps;
  step_status text := coalesce(step ->> 'status', 'running');
  -- When the call ended: `age_ms` before now (bounded to an hour: a clock of ours, not
  -- the caller's, and never in the future).
  ended timestamptz := now() - make_interval(secs => least(greatest(
      coalesce((step ->> 'age_ms')::double precision, 0), 0), 3600000) / 1000.0);
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
