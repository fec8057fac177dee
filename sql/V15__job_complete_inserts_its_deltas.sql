-- job_complete inserts a job's last deltas itself, and an attempt row may carry text
-- (issue #14, the 1-worker queue cost).
--
-- V13 stored them through delta_store, a SECURITY DEFINER function with its own
-- search_path that re-checked what job_complete had just checked: the shape of every
-- row, that every row names this job and lease, and the lease again. Measured inside
-- one transaction (benches/README 7c) that call cost 144 µs for a one-step job's two
-- rows against 58 µs for the same rows by a plain INSERT, and the queue benchmark's
-- whole streaming cost in Postgres was +0.25-0.33 ms per job.
--
-- Now the rows are inserted by job_complete's own INSERT, under the lease it has
-- checked and locked (job_lease_check, FOR NO KEY UPDATE) in the same transaction.
-- They belong to the job being completed: the rows need not name their job or lease
-- (workers of V13 still do; a row that names another is refused, as before). Missing fields are refused by the table's NOT NULL constraints
-- (23502, 400 at PostgREST), kinds by its CHECK; the bounds stay those of
-- delta_append (5,000 rows; 4 MiB, measured on the stored jsonb instead of on a text
-- copy of it). A retried job_complete stays idempotent (ON CONFLICT DO NOTHING), and
-- what V13 promised holds: the last text, the steps and `succeeded` commit together.
--
-- An `attempt` row may now carry text: the attempt's first text, when the worker had
-- some by the time it wrote the row (a call answered within one flush interval is one
-- row instead of an empty `attempt` and a `delta`; each row costs Postgres more than
-- its bytes: benches/README 7d). The reassembly rule of V11 becomes, per call in seq
-- order: an `attempt` starts the text again from the row's own text, a `delta`
-- appends its text, a `discard` or a `restart` empties it. Rows written before this
-- (attempt text always '') read the same under the new rule; a reader of the old rule
-- would miss an attempt's first text, so readers (supabase/client, the admin page, the
-- CLI) move with the worker.
--
-- The service role may now INSERT into generation_deltas (it could already write the
-- jobs and steps tables the same way); people still only read it.

GRANT INSERT ON TABLE public.generation_deltas TO service_role;

CREATE OR REPLACE FUNCTION public.job_complete(job_id uuid, lease_token uuid, result jsonb,
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
    IF jsonb_typeof(job_complete.deltas) <> 'array' THEN
      RAISE EXCEPTION 'deltas must be a JSON array' USING ERRCODE = '22023', DETAIL = 'invalid_request';
    END IF;
    IF jsonb_array_length(job_complete.deltas) > 5000 THEN
      RAISE EXCEPTION 'at most 5000 rows per call' USING ERRCODE = '22023', DETAIL = 'too_many_deltas';
    END IF;
    IF pg_column_size(job_complete.deltas) > 4194304 THEN
      RAISE EXCEPTION 'at most 4 MiB per call' USING ERRCODE = '22023', DETAIL = 'deltas_too_large';
    END IF;
    -- Rows that name a job or lease name this one (workers of V13 name them).
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(job_complete.deltas) e
                WHERE (e ? 'job_id' AND (e ->> 'job_id')::uuid IS DISTINCT FROM job_complete.job_id)
                   OR (e ? 'lease' AND (e ->> 'lease')::uuid IS DISTINCT FROM job_complete.lease_token)) THEN
      RAISE EXCEPTION 'every row must belong to the job being completed'
        USING ERRCODE = '22023', DETAIL = 'invalid_request';
    END IF;
    INSERT INTO public.generation_deltas (job_id, seq, step_id, item_index, kind, attempt, run, text, meta)
    SELECT job_complete.job_id, r.seq, r.step_id, coalesce(r.item_index, -1), r.kind, r.attempt,
           r.run, coalesce(r.text, ''), r.meta
      FROM jsonb_to_recordset(job_complete.deltas) AS r(seq bigint, step_id text, item_index integer,
           kind text, attempt integer, run integer, text text, meta jsonb)
    ON CONFLICT (job_id, seq) DO NOTHING;
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

-- Nothing calls it any more.
DROP FUNCTION public.delta_store(uuid, uuid, jsonb);
