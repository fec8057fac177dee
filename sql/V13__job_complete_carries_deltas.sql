-- job_complete also stores the job's last streamed deltas (issue #14): the worker hands
-- the rows its delta writer had not flushed yet to job_complete instead of flushing them
-- first, so finishing a streamed job costs the one round trip it cost before streaming
-- (the flush before completion doubled the end of a one-step job's run: benches/README
-- section 7, the 1-worker queue).
-- The rows are inserted by delta_append, in the same transaction as the steps and the
-- status: a reader sees the last text, the step records and `succeeded` together, so
-- the reassembly rule of V11 holds ("when the step finishes, the text equals its
-- output"). A retried job_complete is idempotent for them (ON CONFLICT DO NOTHING).
-- Every row must belong to the job being completed. Older workers, which do not name
-- `deltas`, get the default: nothing to insert.
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
  IF job_complete.deltas IS NOT NULL AND jsonb_typeof(job_complete.deltas) = 'array'
     AND jsonb_array_length(job_complete.deltas) > 0 THEN
    IF EXISTS (SELECT 1 FROM jsonb_to_recordset(job_complete.deltas) AS r(job_id uuid, lease uuid)
                WHERE r.job_id IS DISTINCT FROM job_complete.job_id
                   OR r.lease IS DISTINCT FROM job_complete.lease_token) THEN
      RAISE EXCEPTION 'deltas must all belong to the job being completed'
        USING ERRCODE = '22023', DETAIL = 'invalid_request';
    END IF;
    PERFORM public.delta_append(job_complete.deltas);
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
